"""`lthfast bench ticket` runs end to end on a small model and writes its JSON. Never asserts on speed."""
import json

import pytest

from lthfast import _ops
from lthfast.cli import main

pytestmark = [pytest.mark.skipif(not _ops.available(), reason="lthfast._C not built"),
              pytest.mark.skipif(__import__("importlib").util.find_spec("torchvision") is None,
                                 reason="needs torchvision")]


def test_bench_ticket_quick(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "ticket", "--quick", "--warmup", "0", "--quiet", "--models", "mobilenet_v3_small",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Ticket.save" in out and "x floor" in out and "file/(w/8)" in out
    res = json.loads(path.read_text())["suites"]["ticket"]
    assert res["status"] == "ok" and all(c["status"] == "ok" for c in res["cases"])
    methods = {c["method"] for c in res["cases"]}
    assert {"ticket_save", "ticket_load", "lthfast_pack", "lthfast_unpack", "torch_save_bool"} <= methods
    assert res["targets"] and res["targets"][0]["value"] < 1.1  # header + metadata: a few KiB
