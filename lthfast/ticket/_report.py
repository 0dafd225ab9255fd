"""Per-layer tables of a Ticket: shape, params, kept, sparsity, and fully pruned
conv kernels (out x in slices) or linear rows."""
from __future__ import annotations

import torch


def _zero_slices(mask: torch.Tensor) -> tuple[int, str | None]:
    if mask.dim() >= 3:  # conv: one kernel per (out, in) pair
        kept_any = mask.reshape(mask.shape[0] * mask.shape[1], -1).any(dim=1)
        return int((~kept_any).sum()), "kernels"
    if mask.dim() == 2:  # linear: one row per output
        return int((~mask.any(dim=1)).sum()), "rows"
    return 0, None


def rows(ticket, model=None) -> list[dict]:
    out = []
    for name in ticket.names():
        mask = ticket[name]
        zero, kind = _zero_slices(mask) if mask.numel() else (0, None)
        row = {"name": name, "shape": ticket.shapes[name], "params": ticket.numel(name),
               "kept": ticket.kept(name), "sparsity": ticket.sparsity(name),
               "zero_slices": zero, "slice_kind": kind}
        if model is not None:
            p = model.get_parameter(name)
            prefix = name.rpartition(".")[0]
            row["module"] = type(model.get_submodule(prefix) if prefix else model).__name__
            m = mask.to(p.device)
            row["applied"] = bool(torch.count_nonzero(p.detach()[~m]) == 0)
        out.append(row)
    return out


def _num(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def _pct(kept: int, n: int) -> str:
    """Pruned share of ``n`` weights as a percentage with 2 decimals, never rounded to
    100.00% while a weight is kept (nor to 0.00% while one is pruned): a layer shown at
    100.00% has collapsed, one shown at 0.00% is dense."""
    if n <= 0:
        return "0.00%"
    text = f"{100 * (1 - kept / n):.2f}%"
    if kept > 0 and text == "100.00%":
        return ">99.99%"
    if kept < n and text == "0.00%":
        return "<0.01%"
    return text


def format_rows(table: list[dict], ticket) -> str:
    """A fixed-width text table with a total line."""
    with_model = bool(table) and "module" in table[0]
    head = ["name", "shape", "params", "kept", "sparsity", "zero slices"]
    if with_model:
        head += ["module", "applied"]
    lines = []
    for r in table:
        zs = f"{r['zero_slices']} {r['slice_kind']}" if r["slice_kind"] else "-"
        cells = [r["name"], "x".join(map(str, r["shape"])) or "()", _num(r["params"]),
                 _num(r["kept"]), _pct(r["kept"], r["params"]), zs]
        if with_model:
            cells += [r["module"], "yes" if r["applied"] else "NO"]
        lines.append(cells)
    total = ["total", "", _num(ticket.numel()), _num(ticket.kept()),
             _pct(ticket.kept(), ticket.numel()), str(sum(r["zero_slices"] for r in table))]
    if with_model:
        total += ["", "yes" if all(r["applied"] for r in table) else "NO"]
    widths = [max(len(str(c)) for c in col) for col in zip(head, total, *lines)]

    def fmt(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(fmt(head))
    title = (f"Ticket round {ticket.round}: {len(table)} tensors, sparsity "
             f"{_pct(ticket.kept(), ticket.numel())}")
    out = [title, fmt(head), rule, *map(fmt, lines), rule, fmt(total)]
    collapsed = ticket.collapsed()
    if collapsed:  # nothing flows through these layers any more
        out.append(f"layer collapse (no weight kept): {', '.join(collapsed)}")
    return "\n".join(out)
