"""Timing and peak-memory measurement of one benchmark case.

CPU memory is the growth of the resident set size during the call: before each
timed call the freed heap is returned to the OS (malloc_trim), the kernel's peak
RSS counter is reset (/proc/self/clear_refs = 5), and afterwards the peak
(VmHWM) minus the RSS before the call is the peak extra memory. What the result
still holds is the RSS growth after the freed heap is returned to the OS again
(malloc_trim after the call too: memory the call freed but malloc kept cached is
not "held"). Memory the call allocates but never touches is not counted (it
costs no RAM). Linux-only; the
probe reports None elsewhere. CUDA memory comes from torch.cuda's allocator
statistics (memory allocated through other allocators, e.g. cupy's, is not seen).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _load_malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


class CpuMemoryProbe:
    """Peak extra resident memory of a call (see the module docstring)."""

    def __init__(self):
        self._trim = _load_malloc_trim()
        self.available = self._reset_peak() and _read_status_kb("VmHWM") is not None
        self.method = ("peak RSS (VmHWM after clear_refs=5) minus RSS before, after malloc_trim"
                       if self.available else "unavailable (needs Linux /proc/self/clear_refs)")
        self._rss0 = 0

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        if not self.available:
            return
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self._reset_peak()
        self._rss0 = _read_status_kb("VmRSS") or 0

    def stop(self) -> tuple[int | None, int | None]:
        """(peak extra bytes, bytes still held right after the call)."""
        if not self.available:
            return None, None
        peak = _read_status_kb("VmHWM") or 0
        if self._trim is not None:
            # freed but cached by malloc is not held by the result (the call's working
            # memory, e.g. per-layer temporaries that came from the heap)
            self._trim(0)
        rss = _read_status_kb("VmRSS") or 0
        return max(0, peak - self._rss0), max(0, rss - self._rss0)


class CudaMemoryProbe:
    """Peak extra bytes from torch.cuda.max_memory_allocated on `device`."""

    available = True
    method = "torch.cuda.max_memory_allocated minus memory_allocated before"

    def __init__(self, device: torch.device):
        self.device = device
        self._m0 = 0

    def start(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._m0 = torch.cuda.memory_allocated(self.device)

    def stop(self) -> tuple[int, int]:
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        now = torch.cuda.memory_allocated(self.device)
        return max(0, peak - self._m0), max(0, now - self._m0)


class NoMemoryProbe:
    """For suites that report no memory: nothing is done around the timed call. The
    memory probes' gc.collect() leaves the CPU caches cold, which made the next Python
    call ~0.5 ms slower (a 161-tensor optimizer step on this VM: 290 -> 780 us), far
    beyond what a step in a training loop sees."""

    available = False
    method = "not measured"

    def start(self) -> None:
        pass

    def stop(self) -> tuple[None, None]:
        return None, None


def memory_probe(device: torch.device):
    return CudaMemoryProbe(device) if device.type == "cuda" else CpuMemoryProbe()


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds `fn()` takes (CUDA events on the current stream for cuda, else
    perf_counter), and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def balanced_orders(names: list) -> list[list]:
    """Orders in which to run interleaved methods, one per round (a Williams design):
    over the whole list every method runs right after every other one equally often,
    and in each position equally often. A plain rotation (a b c, b c a, c a b) keeps
    each method's predecessor fixed: one that follows the method whose data it shares
    finds its caches warm every round, and one that follows a cache-evicting method
    finds them cold every round (measured on masked convs: `auto`, right after
    `sparse`, timed 15% under it while running the same kernel). len(names) orders
    for an even count, 2 * len(names) for an odd one. Within each order only: a
    round's first method follows the previous round's last, which no design of whole
    rounds balances, so callers separate rounds (flush_caches)."""
    n = len(names)
    if n < 2:
        return [list(names)]
    base, lo, hi = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...: every difference once
    while len(base) < n:
        base.append(lo)
        lo += 1
        if len(base) < n:
            base.append(hi)
            hi -= 1
    rows = [[names[(b + i) % n] for b in base] for i in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


_FLUSH: dict = {}


def flush_caches(device: torch.device, nbytes: int = 64 << 20) -> None:
    """Overwrites `nbytes` (more than a CPU's last-level cache or an H100's 50 MB L2) so
    that the next timed call finds no data of the call before it in the caches. The
    buffer is kept: a fresh one would time page faults into whatever runs next."""
    key = (device.type, device.index)
    buf = _FLUSH.get(key)
    if buf is None or buf.numel() * 4 < nbytes:
        buf = _FLUSH[key] = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    buf.fill_(1.0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    times_s: list[float] = field(default_factory=list)
    peak_extra_bytes: list[int | None] = field(default_factory=list)
    retained_bytes: list[int | None] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def peak_extra_max(self) -> int | None:
        vals = [v for v in self.peak_extra_bytes if v is not None]
        return max(vals) if vals else None

    @property
    def transient_max(self) -> int | None:
        """Peak extra minus what the result still holds: the working memory."""
        vals = [p - r for p, r in zip(self.peak_extra_bytes, self.retained_bytes)
                if p is not None and r is not None]
        return max(0, max(vals)) if vals else None

    @property
    def retained_median(self) -> int | None:
        vals = [v for v in self.retained_bytes if v is not None]
        return int(statistics.median(vals)) if vals else None


def measure(setup: Callable[[], Any], run: Callable[[Any], Any], device: torch.device, *,
            repeat: int, warmup: int, probe=None) -> Measurement:
    """Runs `run(setup())` `warmup` times untimed, then `repeat` times timed, each on
    a fresh `setup()` (not timed, not counted in memory)."""
    probe = probe or memory_probe(device)
    for _ in range(warmup):
        state = setup()
        out = run(state)
        del out, state
    m = Measurement()
    for _ in range(repeat):
        state = setup()
        probe.start()
        seconds, out = time_call(lambda: run(state), device)
        peak, retained = probe.stop()
        del out, state
        m.times_s.append(seconds)
        m.peak_extra_bytes.append(peak)
        m.retained_bytes.append(retained)
    return m
