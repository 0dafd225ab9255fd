"""Matplotlib (Agg) helpers shared by the analysis plots: every plot is returned as a
base64 PNG ready for `lthfast.imp.report.img`."""
from __future__ import annotations

from lthfast.imp.report import literal_text  # noqa: F401  (every plot function wears it)


def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def png(fig) -> str:
    from lthfast.imp.report import _png
    return _png(fig)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
