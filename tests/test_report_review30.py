"""Stop 30's review of what users look at after runs: run labels with '$' in the plots."""
from __future__ import annotations

import base64
import re

import pytest

pytest.importorskip("matplotlib")

from _analysis_fixtures import three_round_tickets, write_run  # noqa: E402
from lthfast.cli import main  # noqa: E402


def _run(tmp_path, name):
    return write_run(tmp_path / name, three_round_tickets(),
                     [{"round": r, "sparsity": s, "bbox_AP": 30.0 - r} for r, s in
                      enumerate((0.0, 0.5, 0.75))])


def test_dollar_signs_in_labels_are_text_not_mathtext(tmp_path):
    # matplotlib read 'a$\q$' as mathtext: five sections were "not available: Unknown symbol"
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    out = tmp_path / "page.html"
    assert main(["report", a, b, "--labels", r"a$\q$,lr$1e-3$", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Unknown symbol" not in page and "ParseFatalException" not in page
    images = dict(re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page))
    assert {"detection: sparsity vs metric", "per-layer IoU", "early-bird stability",
            "per-layer structure"} <= set(images), list(images)
    assert all(base64.b64decode(x)[:4] == b"\x89PNG" for x in images.values())


def test_plot_functions_draw_dollar_text_literally():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lthfast.imp.report import literal_text

    @literal_text
    def plot():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 2], label=r"a$\q$")
        ax.set_title("run$1 vs run$2")
        ax.legend()
        fig.canvas.draw()  # failed: Unknown symbol \q
        return fig

    fig = plot()
    assert not fig.axes[0].title.get_parse_math()
    assert matplotlib.rcParams["text.parse_math"]  # the caller's setting is left as it was
    plt.close(fig)
