"""Matplotlib (Agg) helpers shared by the analysis plots: every plot is returned as a
base64 PNG ready for `lthfast.imp.report.img`."""
from __future__ import annotations

import types

from lthfast.imp.report import literal_text, subplots  # noqa: F401  (literal_text: every plot wears it)


def plt():
    """What the plots call `subplots` on: figures of their own, not pyplot's (the caller's
    backend is left as it is; see lthfast.imp.report.subplots)."""
    return types.SimpleNamespace(subplots=subplots)


def png(fig) -> str:
    from lthfast.imp.report import _png
    return _png(fig)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
