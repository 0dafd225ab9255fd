"""lthfast.Ticket: a lottery ticket's masks by parameter name, bit-packed, applied
in place, saved as safetensors."""
from lthfast.ticket._core import Ticket

__all__ = ["Ticket"]
