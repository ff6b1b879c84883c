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
