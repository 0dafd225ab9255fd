"""lthfast.Ticket: a lottery ticket's masks by parameter name, bit-packed (1 bit
per weight in memory and on disk), applied in place, saved as safetensors.

    ticket = lthfast.Ticket.from_model(model, 0.2)       # round 1: 20% of the weights
    ticket.apply(model)                                  # zero pruned weights in place
    ...train...
    ticket = ticket.prune(model, 0.2)                    # round 2: 20% of the remaining
    ticket.save("round2.safetensors")
    print(ticket.format_report(model))

Layout: _core (the class), _select (scope/exclude), _binding (apply -> mask_for),
_file (safetensors read/write), _report (per-layer table), _interop (torch.nn.utils.prune).
"""
from lthfast.ticket._core import Ticket

__all__ = ["Ticket"]
