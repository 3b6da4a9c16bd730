"""Helpers shared by the benchmarks in this folder: timing, peak memory, environment, JSON output.

Import it from a bench script run as ``python bench/<script>.py`` (the script's folder is on
``sys.path``): ``from common import time_interleaved, ...``. Nothing here knows about a model family.

Timing: ``time_interleaved`` alternates the implementations being compared inside each
repetition, so that load from other processes on a shared machine hits both alike; the
median is reported. Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated``
during one call; on CPU the process high-water mark ``ru_maxrss``, which only means
something per implementation in a fresh process (see ``run_json_subprocess``).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall time covers it (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device | str, warmup: int = 1,
                     repeats: int = 5) -> dict[str, list[float]]:
    """Seconds per call for each named function, alternating them (A B A B ...) after ``warmup`` calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(list(fns)))  # no systematic first-runner bias
        for name in order:
            times[name].append(time_call(fns[name], device))
    return times


def summarize(times: list[float], items_per_call: int) -> dict[str, float | int | list[float]]:
    """Median seconds per call and the derived throughput (items per second)."""
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times), "runs": len(times),
            "items_per_s": items_per_call / med, "all_s": [round(t, 5) for t in times]}


def maxrss_bytes() -> int:
    """This process's resident-set high-water mark. On Linux from /proc (VmHWM): ``ru_maxrss`` survives
    exec, so a worker started by a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Extra CUDA memory allocated at the peak of one call, above what was allocated before it."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def run_json_subprocess(argv: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> dict:
    """Run ``python argv...`` in a fresh interpreter and parse the last stdout line as JSON.

    A fresh process is the only way to get a CPU peak (``ru_maxrss``) that belongs to one run.
    """
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {argv} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"worker {argv} printed nothing:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def env_info(device: torch.device | str) -> dict[str, Any]:
    """What the numbers were measured on."""
    device = torch.device(device)
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "device": str(device), "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "machine": platform.machine(),
                            "processor": platform.processor() or platform.machine(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # AVX2 / AVX512: picks kernels
    info.update(cpu_model())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_model() -> dict[str, Any]:
    """The CPU's name and its bfloat16 matmul units (AMX tiles, AVX512-BF16 dot products): the same
    code runs ~7x (AMX) or ~2x (AVX512-BF16) faster in bfloat16 than float32, so a table means little without them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu_model": platform.processor() or "unknown"}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "unknown"),
            "cpu_bf16_units": [f for f in ("amx_bf16", "avx512_bf16") if f in flags]}


def write_json(result: dict, out: str | Path | None, echo: bool = True) -> None:
    """Print the result as one JSON document on stdout (unless ``echo`` is false: a partial result saved
    while a run goes on), and write it to ``out`` when given, whole or not at all."""
    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text + "\n")
        partial.replace(path)  # a run killed mid-write never leaves a half-written file
