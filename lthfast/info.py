"""What lthfast was built with, and what this machine can run.

`python -m lthfast.info` prints the same report as `lthfast info`.
"""
from __future__ import annotations

import os
import sys

import torch

import lthfast
from lthfast import _ops

_BUILD_CMD = "pip install --no-build-isolation -e .   (in the lthfast checkout; or `make setup`)"


def _has_kernel(op: str, key: str) -> bool | None:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except Exception:  # noqa: BLE001 - private API; report unknown
        return None


def _has_fake(op: str) -> bool | None:
    try:
        from torch._library.simple_registry import singleton
        return singleton.find(op).fake_impl.kernel is not None
    except Exception:  # noqa: BLE001 - private API; report unknown
        return None


def registered_ops() -> list[dict]:
    """Every op under torch.ops.lthfast with the devices it has kernels for."""
    try:
        names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("lthfast::"))
    except Exception:  # noqa: BLE001
        names = [f"lthfast::{n}" for n in sorted(dir(torch.ops.lthfast)) if not n.startswith("_")]
    return [{"name": n.split("::", 1)[1], "cpu": _has_kernel(n, "CPU"),
             "cuda": _has_kernel(n, "CUDA"),
             # a kernel composed of other ops, for devices without one of their own
             "composite": _has_kernel(n, "CompositeExplicitAutograd"),
             "fake": _has_fake(n)} for n in names]


def collect() -> dict:
    """The facts `lthfast info` prints, as a JSON-able dict."""
    build = _ops.build_info()
    ops = registered_ops()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_bytes": int(p.total_memory)})
    compiled = bool(build.get("compiled"))
    return {
        "lthfast_version": lthfast.__version__,
        "package_dir": os.path.dirname(os.path.abspath(lthfast.__file__)),
        "compiled": compiled,
        "build": build,
        "reference_mode": _ops.use_reference(),
        "torch_runtime": torch.__version__,
        "torch_runtime_cuda": torch.version.cuda,
        "torch_built_against": build.get("torch_version"),
        "cpu_kernels": compiled and bool(build.get("cpu", True)) and any(o["cpu"] for o in ops),
        "cpu_openmp": build.get("openmp"),
        "torch_openmp": bool(torch._C.has_openmp),
        "cpu_threads": torch.get_num_threads(),
        # the instruction set the sparse conv kernels run with (avx512, avx2, base)
        "cpu_sparse_isa": build.get("cpu_sparse_isa"),
        # ... and the threshold's range and fp32 mask passes (avx2, base)
        "cpu_threshold_isa": build.get("cpu_threshold_isa"),
        "cuda_kernels": compiled and bool(build.get("cuda")) and any(o["cuda"] for o in ops),
        "cuda_version": build.get("cuda_version"),
        "cuda_archs": build.get("cuda_archs"),
        "gpus": gpus,
        "ops": ops,
        "python": sys.version.split()[0],
    }


def _yes_no(flag) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


def _archs(archs) -> str:
    if not archs:
        return "none"
    if isinstance(archs, str):
        return archs
    return " ".join(str(a) for a in archs)


def _cpu_threads(info: dict) -> str:
    """How many threads the CPU kernels run on (torch.set_num_threads sets it)."""
    if not info["cpu_kernels"]:
        return ""
    if info["cpu_openmp"] or not info["torch_openmp"]:
        n = info["cpu_threads"]
        return f" (on {n} thread{'' if n == 1 else 's'}: torch.get_num_threads())"
    if info["cpu_openmp"] is False:
        return ("  WARNING: built without OpenMP, so the CPU kernels run on one thread; "
                "rebuild lthfast")
    return ""


def format_report(info: dict) -> str:
    lines = []
    add = lines.append

    def row(key, value):
        add(f"  {key:<22}{value}")

    add(f"lthfast {info['lthfast_version']}  ({info['package_dir']})")
    if info["compiled"]:
        row("compiled extension", f"yes (lthfast._C {info['build'].get('version', '?')})")
    else:
        row("compiled extension", "NOT BUILT")
        row("", f"import error: {info['build'].get('error')}")
        row("", f"build it with: {_BUILD_CMD}")
        row("", "or set LTHFAST_REFERENCE=1 to run the slow pure-PyTorch reference")
    row("reference mode", "on (LTHFAST_REFERENCE=1: pure-PyTorch fallback, slow)"
        if info["reference_mode"] else "off")

    add("torch")
    row("runtime", f"{info['torch_runtime']} (CUDA {info['torch_runtime_cuda'] or 'none'})")
    built = info["torch_built_against"]
    if info["compiled"]:
        note = ""
        if built and built.split("+")[0].rsplit(".", 1)[0] != info["torch_runtime"].split("+")[0].rsplit(".", 1)[0]:
            note = "   WARNING: differs from the runtime torch; rebuild lthfast"
        row("built against", f"{built or 'unknown'}{note}")
    else:
        row("built against", "n/a (not built)")

    add("kernels")
    row("CPU", _yes_no(info["cpu_kernels"]) + _cpu_threads(info))
    if info["cpu_kernels"] and info.get("cpu_sparse_isa"):
        row("CPU sparse conv", f"{info['cpu_sparse_isa']} kernels (the best this CPU runs)")
    if info["cpu_kernels"] and info.get("cpu_threshold_isa"):
        row("CPU threshold", f"{info['cpu_threshold_isa']} range and mask passes (the best this CPU runs)")
    if info["cuda_kernels"]:
        row("CUDA", f"yes (CUDA {info['cuda_version'] or '?'}; archs {_archs(info['cuda_archs'])})")
    elif info["compiled"]:
        row("CUDA", "no (built without CUDA; rebuild with a CUDA toolkit and a CUDA build of "
            "torch, or FORCE_CUDA=1)")
    else:
        row("CUDA", "no (not built)")
    extra = {k: v for k, v in info["build"].items()
             if k not in ("version", "torch_version", "cpu", "cuda", "cuda_version", "cuda_archs",
                          "compiled", "error", "openmp", "cpu_sparse_isa",
                          "cpu_threshold_isa")}
    for k, v in sorted(extra.items()):
        row(k, v)

    add("GPU")
    if info["gpus"]:
        for g in info["gpus"]:
            row(f"cuda:{g['index']}", f"{g['name']} (sm_{g['capability'].replace('.', '')}, "
                f"{g['memory_bytes'] / 2**30:.0f} GiB)")
    else:
        row("visible", "no (torch.cuda.is_available() is False)")

    add("ops (torch.ops.lthfast)")
    if not info["ops"]:
        row("", "none registered" + ("" if info["compiled"] else " (extension not built)"))
    width = max([len(o["name"]) for o in info["ops"]] + [20])
    for o in info["ops"]:
        devs = [d for d, k in (("CPU", "cpu"), ("CUDA", "cuda")) if o[k]]
        if o.get("composite") and not o["cuda"] and info["cuda_kernels"]:
            devs.append("CUDA (composed of other ops)")
        fake = {True: "  +fake", False: "", None: ""}[o["fake"]]
        add(f"  {o['name']:<{width}}  {' '.join(devs) or 'no kernels'}{fake}")
    if not info["cuda_kernels"] and any(o["cuda"] for o in info["ops"]):
        # the dense masked conv / linear ops are C++ on ATen: cuDNN runs them on a GPU
        add("  (CUDA above without CUDA kernels: ops written on ATen, which run on a GPU too)")
    return "\n".join(lines)


def main(argv=None) -> int:
    from lthfast.cli import main as cli_main
    return cli_main(["info", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
