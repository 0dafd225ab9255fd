"""Data-parallel IMP: one process per device, started by torchrun (or `--nproc N`).

Every rank trains a DistributedDataParallel copy on its own batches; gradients
are averaged, so all ranks hold the same weights and compute the same ticket (the
engine checks a digest of every mask on all ranks). Rank 0 evaluates and writes
the run directory; the others wait for it. nccl on GPU, gloo on CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


class OtherRankFailed(RuntimeError):
    """Raised on the ranks that wait for one that failed: the failing rank reports the
    cause; the command prints this one line, not a traceback."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> None:
    """Joins the process group when started by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return
    # nccl needs a GPU: without one gloo still joins, and check_settings names the bad --device
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def local_device(device: str) -> torch.device:
    if device.startswith("cuda") and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def wrap(model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
    """The model to train: DDP-wrapped when several processes run."""
    if not active() or world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    dev = next(model.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    # Detection heads may leave parameters without gradient in an iteration
    # (e.g. no positive anchors): those callers pass find_unused=True.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def on_main(fn, *args, **kwargs):
    """Runs fn on rank 0 and gives its (picklable) result to every rank. An error in fn
    is raised on every rank (the others would otherwise wait in the broadcast)."""
    if not active() or world_size() == 1:
        return fn(*args, **kwargs)
    box, error = [None], None
    if is_main():
        try:
            box = [("ok", fn(*args, **kwargs))]
        except Exception as e:
            error = e
            box = [("error", f"{type(e).__name__}: {e}"[:1000])]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise OtherRankFailed(f"rank 0 failed in {getattr(fn, '__name__', fn)}: {value}")
    return value


def decided_on_main(device: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` computed once, on rank 0, and the same value on every rank:
    for choices that could differ between processes (a timestamp, a random name). Joins the
    process group first when torchrun started this process (`init(device)`)."""
    init(device)
    return on_main(fn, *args, **kwargs)


def _store():
    from torch.distributed import distributed_c10d
    return distributed_c10d._get_default_store()


def tell_failure(error: BaseException) -> None:
    """On a rank other than 0: leaves `error` in the process group's store, where rank 0
    (which writes status.json) finds it once the collectives break. Best effort."""
    if not active() or is_main() or isinstance(error, (OtherRankFailed, KeyboardInterrupt)):
        return
    try:
        _store().set(f"lthfast/failed/{rank()}", f"{type(error).__name__}: {error}"[:500])
    except Exception:  # the store may be gone already: status.json keeps rank 0's view
        pass


def failure_elsewhere() -> str | None:
    """On rank 0: the error another rank left with `tell_failure`, as "rank R: Type: msg"."""
    if not active() or not is_main():
        return None
    try:
        store = _store()
        for r in range(1, world_size()):
            key = f"lthfast/failed/{r}"
            if store.check([key]):
                return f"rank {r}: {store.get(key).decode(errors='replace')}"
    except Exception:
        pass
    return None


def shutdown() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()


def spawn(nproc: int, argv: list[str]) -> int:
    """`lthfast imp --nproc N ...`: reruns the command under torchrun with N processes."""
    rest, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    return run_in_own_session([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", "-m", "lthfast"] + rest)


def run_in_own_session(cmd: list[str]) -> int:
    """Runs `cmd` (torchrun) to its end and returns its exit status."""
    # torchrun in a session of its own, so that a signal reaches it once, from here:
    # Ctrl-C / SIGTERM to this process stop it as they stop torchrun itself (it
    # SIGTERMs the workers, which record the run as interrupted), and it goes when
    # this process is killed outright (PR_SET_PDEATHSIG) instead of training on.
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent())
    import signal

    def forward(signum, frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    import threading
    previous = ({sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # an error here: do not leave it running
            proc.terminate()
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _die_with_parent():
    """The child's preexec_fn: SIGTERM when the parent dies (Linux prctl), or None. prctl
    is looked up here, in the parent: the child only calls it (no dlopen between fork
    and exec)."""
    try:
        import ctypes
        import signal
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the session alone
        return None
    term = int(signal.SIGTERM)
    return lambda: prctl(1, term)  # PR_SET_PDEATHSIG


def on_main_first(fn, *args, **kwargs):
    """Runs fn on rank 0, then on the other ranks (e.g. rank 0 writes a dataset to
    disk that the others then read). An error on rank 0 is raised on every rank."""
    if not active() or world_size() == 1:
        return fn(*args, **kwargs)
    if is_main():
        try:
            out = fn(*args, **kwargs)
        except Exception as e:
            dist.broadcast_object_list([f"{type(e).__name__}: {e}"[:1000]], src=0)
            raise
        dist.broadcast_object_list([None], src=0)
        return out
    box = [None]
    dist.broadcast_object_list(box, src=0)  # waits for rank 0, as a barrier did
    if box[0] is not None:
        raise OtherRankFailed(f"rank 0 failed in {getattr(fn, '__name__', fn)}: {box[0]}")
    return fn(*args, **kwargs)
