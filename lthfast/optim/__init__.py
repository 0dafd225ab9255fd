"""Fused mask-aware optimizers: torch.optim.SGD / Adam / AdamW whose single step
kernel keeps pruned weights (and their optimizer state) at exactly zero.

    ticket.apply(model)
    opt = lthfast.optim.MaskedAdamW(model.parameters(), lr=1e-3, ticket=ticket)
    ...
    opt.set_ticket(next_round_ticket)   # IMP: new masks, same optimizer
"""
from lthfast.optim.adam import MaskedAdam, MaskedAdamW
from lthfast.optim.sgd import MaskedSGD

__all__ = ["MaskedSGD", "MaskedAdam", "MaskedAdamW"]
