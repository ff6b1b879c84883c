"""Wall time and peak memory of a block of work, for stage timings and performance benchmarks.

On CPU the peak is the process's resident set size, sampled by a background thread (``ru_maxrss`` is a
process-lifetime maximum and cannot be reset per stage). On CUDA it is torch's peak allocated memory.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    device: str = "cpu"


@contextmanager
def measure(device: str = "cpu", interval: float = 0.02):
    """Measure the enclosed block; yields a :class:`Measurement` filled in when the block exits."""
    result = Measurement(device=device)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield result
        finally:
            torch.cuda.synchronize()
            result.seconds = time.perf_counter() - start
            result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
        return
    process = psutil.Process()
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        result.peak_memory_mb = peak[0] / 2**20


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux ``VmHWM``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_peak_mb() is not None
    except OSError:
        return False


def _rss_peak_mb() -> float | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return None


@contextmanager
def peak_memory(device: str):
    """Yield a :class:`Measurement` whose ``peak_memory_mb`` is set at exit: CUDA peak allocated, or CPU peak RSS.

    On Linux the CPU peak is the kernel's exact high-water mark (reset at entry), so no sampling thread runs
    beside a training loop; elsewhere :func:`measure` samples the RSS from a thread.
    """
    if device.startswith("cuda") or not _reset_rss_peak():
        with measure(device) as m:
            yield m
        return
    m = Measurement(device=device)
    try:
        yield m
    finally:
        m.peak_memory_mb = _rss_peak_mb() or 0.0
