"""The README's and docs/'s examples run as written, so the docs cannot drift from the API.

Every ```python block of README.md and docs/*.md is registered in BLOCKS below, keyed by
its file and first line (a new or rewritten block fails `test_every_block_is_registered`
until it is added). Each entry gives the names the snippet takes for granted (`prelude`),
the few substitutions that make it small enough for a CPU test (`subs`: each must match
the block's text exactly, so an edited example fails loudly rather than silently running
something else), and checks to run afterwards (`post`). Blocks in one `group` run in one
namespace, in order (a block that continues the one before it).

Substitutions used (big model / long schedule -> smallest stand-in):
- README run_imp: a 3-layer conv net, `ITERS = 4` (an empty training step) and
  `rewind="iter:500"` -> `"iter:2"`.
- docs/detection-and-analysis.md: shapes with 8 train / 4 val images of 64 px (via
  `load_dataset`'s shapes keywords), 2 training iterations instead of 300.
- docs/ticket-and-optim.md: `GradScaler()` -> `GradScaler("cpu")` (the default device is
  cuda, which only warns and disables itself on a CPU machine).
`model` is a torchvision resnet18 wherever the docs leave the model open.

The shell examples are checked without running them: every `lthfast ...` command shown
parses with the real argument parser, and every `--flag` the docs name exists.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(lang_filter):
    out = []
    for rel in DOC_FILES:
        text = (ROOT / rel).read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            if lang_filter(m.group(1)):
                line = text[:m.start()].count("\n") + 1
                out.append((rel, line, m.group(1), m.group(2)))
    return out


PY_BLOCKS = _blocks(lambda lang: lang == "python")

_RESNET18 = ("import torch, torch.nn as nn, torchvision, lthfast\n"
             "torch.manual_seed(0)\n"
             "model = torchvision.models.resnet18()\n")

_RUN_IMP_POST = (
    "assert [r['round'] for r in res.rows] == [0, 1, 2, 3, 4, 5]\n"
    "assert abs(res.rows[-1]['sparsity'] - (1 - 0.8 ** 5)) < 0.01\n"
    "assert res.rows[-1]['top1'] == 50.0 and res.rows[-1]['train_loss'] == 0.25\n"
    "assert isinstance(res.ticket, lthfast.Ticket) and res.ticket.round == 5\n"
    # the run directory holds what the README lists
    "import json\n"
    "from pathlib import Path\n"
    "run = Path('runs/mine')\n"
    "for f in ['config.json', 'metrics.json', 'metrics.csv', 'checkpoint.pt', 'status.json',\n"
    "          'report.html', 'pruned_params.txt', 'round_5/ticket.safetensors']:\n"
    "    assert (run / f).is_file(), f\n"
    "lthfast.Ticket.load(str(run / 'round_5/ticket.safetensors'))\n"
    "torch.load(run / 'checkpoint.pt', weights_only=True)\n"
    "assert json.loads((run / 'status.json').read_text())['state'] == 'complete'\n"
    # the prose below the block: resume=True grows the run; a fresh run into it is refused
    "res = run_imp(model, names, train_fn=train_fn, eval_fn=lambda m, ctx: {'top1': 1.0},\n"
    "              config=IMPConfig(rounds=6, rate=0.2, rewind='iter:2'), out='runs/mine',\n"
    "              resume=True)\n"
    "assert len(res.rows) == 7\n"
    "try:\n"
    "    run_imp(model, names, train_fn=train_fn, eval_fn=lambda m, ctx: {},\n"
    "            config=IMPConfig(rounds=1), out='runs/mine')\n"
    "except Exception:\n"
    "    pass\n"
    "else:\n"
    "    raise AssertionError('a fresh run_imp into an existing run was not refused')\n")

BLOCKS = {
    ("README.md", "import lthfast | from lthfast.imp import IMPConfig, run_imp"): dict(
        prelude=(
            "import torch, torch.nn as nn\n"
            "torch.manual_seed(0)\n"
            "model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),\n"
            "                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"
            "names = [n for n, p in model.named_parameters() if n.endswith('weight')]\n"
            "ITERS, last_loss = 4, 0.25\n"
            "accuracy = lambda m: 50.0\n"),
        subs=[('rewind="iter:500"', 'rewind="iter:2"')],
        post=_RUN_IMP_POST,
    ),
    ("README.md", "model = lthfast.nn.sparsify(model.eval(), ticket)   # Conv2d/Linear -> MaskedConv2d/MaskedLinear"): dict(
        prelude=_RESNET18 + ("ticket = lthfast.Ticket.from_model(model, 0.9); ticket.apply(model)\n"
                             "images = torch.randn(1, 3, 64, 64)\n"),
        post=("assert out.shape == (1, 1000)\n"
              "assert not any(isinstance(m, (lthfast.nn.MaskedConv2d, lthfast.nn.MaskedLinear))\n"
              "               for m in model.modules())\n"
              "assert type(model.layer3[0].conv2) is nn.Conv2d\n"),
    ),
    ("README.md", "import lthfast.prune as prune            # was: import torch.nn.utils.prune as prune"): dict(
        prelude=_RESNET18,
        post=("kept = sum(int(m.weight_mask.sum()) for m, _ in params)\n"
              "total = sum(m.weight_mask.numel() for m, _ in params)\n"
              "assert abs(1 - kept / total - 0.36) < 1e-3\n"
              "import torch.nn.utils.prune as tprune\n"
              "assert all(tprune.is_pruned(m) for m, _ in params)\n"),
    ),
    ("README.md", "import lthfast | weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]"): dict(
        prelude=_RESNET18,
        post=("assert len(masks) == len(weights) and masks[0].dtype == torch.bool\n"
              "kept = sum(int(m.sum()) for m in masks); total = sum(m.numel() for m in masks)\n"
              "k1 = round(0.2 * total)\n"
              "assert kept == total - k1 - round(0.2 * (total - k1))\n"
              "assert isinstance(threshold, float) and isinstance(n_ties, int)\n"),
    ),
    ("docs/detection-and-analysis.md", "from lthfast import detection as det"): dict(
        prelude="SMALL = dict(n_train=8, n_val=4, image_size=64)\n",
        subs=[('"train", task="detection")', '"train", task="detection", **SMALL)'),
              ('"val", task="detection")', '"val", task="detection", **SMALL)'),
              ("iters=300, batch_size=4, lr=0.02, warmup_iters=50, lr_steps=(250,))",
               "iters=2, batch_size=4, lr=0.02, warmup_iters=1, lr_steps=(1,), progress=False)")],
        post=("for k in ['bbox_AP', 'bbox_AP50', 'bbox_AP75', 'bbox_APs', 'bbox_APm', 'bbox_APl',\n"
              "          'per_category', 'per_category_area', 'eval_time_s']:\n"
              "    assert k in m, k\n"
              "apl = m['bbox_APl']  # 64 px: no COCO-large object, APl undefined (NaN / None)\n"
              "assert apl is None or apl != apl\n"
              "assert det.scope_of('backbone.fpn.inner_blocks.0.0.weight') == 'fpn'\n"
              "names = det.prunable_names(model, 'paper')\n"
              "assert 'backbone.body.conv1.weight' not in names\n"
              "assert 'rpn.head.conv.0.0.weight' in names\n"),
    ),
    ("docs/ticket-and-optim.md", "ticket = lthfast.Ticket.from_model(model, 0.2)   # global magnitude pruning (layerwise=True: per tensor)"): dict(
        group="ticket", prelude=_RESNET18,
        post=("assert ticket.round == 2 and abs(t.sparsity() - 0.36) < 1e-3\n"
              "assert t.iou(ticket)['overall'] == 1.0\n"),
    ),
    ("docs/ticket-and-optim.md", "opt = lthfast.optim.MaskedSGD(model.parameters(), lr=0.02, momentum=0.9, ticket=ticket)"): dict(
        group="ticket",
        subs=[("torch.amp.GradScaler()", 'torch.amp.GradScaler("cpu")')],
        post=("w = model.layer4[0].conv1.weight\n"
              "assert opt.packed_mask_of(w) is nxt.packed_for(w)\n"
              "assert bool((w[~nxt.mask_for(w)] == 0).all())\n"),
    ),
}


def _key(rel: str, code: str):
    lines = [ln.strip() for ln in code.splitlines() if ln.strip()]
    # several blocks start with `import lthfast`: the second line tells them apart
    return (rel, lines[0] if lines[0] != "import lthfast" else " | ".join(lines[:2]))


def test_every_block_is_registered():
    keys = {_key(rel, code) for rel, _, _, code in PY_BLOCKS}
    new = sorted(k for k in keys if k not in BLOCKS)
    gone = sorted(k for k in BLOCKS if k not in keys)
    assert not new, f"python blocks in the docs that this test does not know (add them to BLOCKS): {new}"
    assert not gone, f"BLOCKS entries with no such block in the docs any more: {gone}"


def _groups():
    """[(id, [(rel, line, code, entry), ...])]: grouped blocks in document order."""
    out, by_group = [], {}
    for rel, line, _, code in PY_BLOCKS:
        entry = BLOCKS.get(_key(rel, code))
        if entry is None:
            continue
        g = entry.get("group")
        if g is None:
            out.append((f"{rel}:{line}", [(rel, line, code, entry)]))
        elif g in by_group:
            by_group[g][1].append((rel, line, code, entry))
        else:
            by_group[g] = (f"{rel}:{line}", [(rel, line, code, entry)])
            out.append(by_group[g])
    return out


GROUPS = _groups()


@pytest.mark.parametrize("blocks", [g[1] for g in GROUPS], ids=[g[0] for g in GROUPS])
def test_python_block_runs(blocks, tmp_path, monkeypatch):
    pytest.importorskip("torchvision")  # the `vision` extra: stand-in models, detection
    pytest.importorskip("pycocotools")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTHFAST_DATA_DIR", str(tmp_path / "data"))
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ns: dict = {"__name__": "__docs_example__"}
    try:
        for rel, line, code, entry in blocks:
            for old, new in entry.get("subs", []):
                assert old in code, f"{rel}:{line}: the example no longer contains {old!r}"
                code = code.replace(old, new)
            where = f"{rel}:{line}"
            if entry.get("prelude"):
                exec(compile(entry["prelude"], f"<prelude of {where}>", "exec"), ns)
            exec(compile(code, f"<{where}>", "exec"), ns)
            if entry.get("post"):
                exec(compile(entry["post"], f"<checks of {where}>", "exec"), ns)
    finally:
        torch.set_num_threads(n_threads)


# ------------------------------------------------------------------ shell examples

def _shell_commands():
    """Every `lthfast ...` (or `python -m lthfast` / `torchrun ... -m lthfast`) command shown
    in a bash or plain code block: (where, argv after `lthfast`)."""
    out = []
    for rel, line, lang, code in _blocks(lambda lang: lang in ("", "bash", "sh", "console")):
        joined = code.replace("\\\n", " ")
        for i, raw in enumerate(joined.splitlines()):
            cmd = raw.split("#", 1)[0].strip()
            m = re.match(r"(?:lthfast|(?:python|torchrun)\s.*-m\s+lthfast)\s+(\S.*)$", cmd)
            if not m:
                continue
            argv = [a for a in shlex.split(m.group(1))
                    if "..." not in a and "[" not in a and "]" not in a]  # placeholders
            if argv[:1] == ["bench"] and len(argv) > 1 and "|" in argv[1]:
                for choice in argv[1].split("|"):  # `bench threshold|optim|...`
                    out.append((f"{rel}:{line}+{i}", ["bench", choice] + argv[2:]))
            else:
                out.append((f"{rel}:{line}+{i}", argv))
    return out


SHELL = _shell_commands()


def test_shell_examples_found():
    subs = {argv[0] for _, argv in SHELL if argv}
    assert {"imp", "report", "compare", "perturb", "prune", "bench", "info"} <= subs, subs


@pytest.mark.parametrize("argv", [a for _, a in SHELL], ids=[w for w, _ in SHELL])
def test_shell_example_parses(argv, capsys):
    from lthfast.cli import build_parser
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`lthfast {' '.join(argv)}` does not parse: {capsys.readouterr().err}")


def _all_options() -> set:
    import argparse

    from lthfast.cli import build_parser
    opts = set()
    stack = [build_parser()]
    while stack:
        p = stack.pop()
        for a in p._actions:
            opts.update(s for s in a.option_strings if s.startswith("--"))
            if isinstance(a, argparse._SubParsersAction):
                stack.extend(a.choices.values())
    return opts


# options the docs name that belong to other programs (pip, torchrun, cmake, make)
_OTHER_TOOLS = {"--no-build-isolation", "--nproc_per_node"}


def test_every_documented_flag_exists():
    opts = _all_options()
    missing = []
    for rel in DOC_FILES:
        text = (ROOT / rel).read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", text):
            flag = m.group(1)
            if flag not in opts and flag not in _OTHER_TOOLS:
                missing.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1}: {flag}")
    assert not missing, "flags named in the docs that no lthfast command has:\n" + "\n".join(missing)


def test_doc_links_and_paths_exist():
    bad = []
    for rel in DOC_FILES:
        text = (ROOT / rel).read_text(encoding="utf-8")
        base = (ROOT / rel).parent
        for m in re.finditer(r"\]\(([^)#\s]+)(#[^)]*)?\)", text):
            target = m.group(1)
            if "://" not in target and not (base / target).exists():
                bad.append(f"{rel}: link {target}")
        for m in re.finditer(r"`((?:bench/results|lthfast|tools|tests|csrc|docs)/[\w./-]+)`", text):
            path = m.group(1)
            if "*" in path or "{" in path:
                continue
            if not (ROOT / path).exists():
                bad.append(f"{rel}: path {path}")
    assert not bad, "\n".join(bad)
