"""Small helpers shared by the training stages: device, seeding, progress bar, checkpoints."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_autocast_pays(device: torch.device) -> bool:
    """bfloat16 autocast speeds training up on CUDA and on CPUs with AVX-512 (bf16 / AMX); on an AVX2-only
    CPU torch emulates bf16 matmuls and a step is ~50x slower (measured: 20 s vs 0.4 s), so train in float32."""
    if device.type == "cuda":
        return True
    return "AVX512" in torch.backends.cpu.get_cpu_capability() and torch.backends.mkldnn.is_available()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class Progress:
    """A minimal progress bar on stderr (one line, rewritten in place; plain lines when not a tty)."""

    def __init__(self, total: int, desc: str, start: int = 0, every: float = 0.5) -> None:
        self.total, self.desc, self.n = total, desc, start
        self.t0 = time.time()
        self.start = start
        self.every = every
        self._last = 0.0
        self.tty = sys.stderr.isatty()
        self.avg: dict[str, float] = {}

    def update(self, n: int = 1, **info: float) -> None:
        self.n += n
        for k, v in info.items():  # smoothed values are what gets printed
            self.avg[k] = v if k not in self.avg else 0.95 * self.avg[k] + 0.05 * v
        now = time.time()
        if now - self._last < (self.every if self.tty else 30.0) and self.n < self.total:
            return
        self._last = now
        done = self.n - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / max(self.total, 1)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        extra = " ".join(f"{k}={v:.4g}" for k, v in self.avg.items())
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f}it/s eta {eta:.0f}s {extra}"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Global torch RNG + the data generator's state, as tensors (``weights_only`` safe)."""
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["data"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save`` (write to a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (tensors and plain values only), or None."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def cosine_lr(step: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``base`` as progress goes 0 -> 1."""
    if step < warmup:
        return float(base * (step + 1) / warmup)
    t = min(max(progress, 0.0), 1.0)
    return float(base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t))))


class StageClock:
    """Progress of a stage = max(steps done / steps, seconds spent / budget): a run that is slower than
    planned still anneals its learning rate and ends on time (``budget_s`` <= 0: steps only)."""

    def __init__(self, steps: int, budget_s: float, spent_s: float) -> None:
        self.steps, self.budget_s, self.spent0 = steps, budget_s, spent_s
        self.t0 = time.time()

    def spent(self) -> float:
        return self.spent0 + time.time() - self.t0

    def progress(self, step: int) -> float:
        p = step / max(self.steps, 1)
        return max(p, self.spent() / self.budget_s) if self.budget_s > 0 else p

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


class ThreadTuner:
    """Picks 1..max threads by measured step time: on a CPU shared with other jobs, fewer OpenMP threads
    are often much faster. Re-tries the other settings every ``every`` steps."""

    def __init__(self, max_threads: int, every: int = 100, trial: int = 4, enabled: bool = True) -> None:
        self.options = sorted({1, max_threads}) if enabled else [max_threads]
        self.cur = max_threads
        self.ema: dict[int, float] = {}
        self.every, self.trial, self.n = every, trial, 0
        self.best = max_threads
        torch.set_num_threads(self.cur)

    def record(self, seconds: float) -> None:
        prev = self.ema.get(self.cur)
        self.ema[self.cur] = seconds if prev is None else 0.7 * prev + 0.3 * seconds
        self.n += 1
        if len(self.options) < 2:
            return
        phase = self.n % self.every
        if phase == 1:  # explore the other setting(s) for a few steps
            others = [o for o in self.options if o != self.best]
            self._set(others[(self.n // self.every) % len(others)])
        elif phase == 1 + self.trial:
            self.best = min(self.ema, key=self.ema.get)
            self._set(self.best)

    def _set(self, n: int) -> None:
        self.cur = n
        torch.set_num_threads(n)


# ---- what every resumable training script shares -----------------------------------------------------
WHERE_ARGS = ("weights", "out", "export", "data_cache", "device", "threads", "fixed_threads", "no_export")


def add_where_args(p: Any, out_default: str, data_cache_default: str) -> None:
    """The options that say where a run reads, writes and runs (not what it trains), and its seed."""
    p.add_argument("--out", default=out_default, help="checkpoint directory")
    p.add_argument("--data-cache", default=data_cache_default)
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)


def run_settings(a: Any) -> dict[str, Any]:
    """The settings that define a run: everything but where it is read / written / run."""
    return {k: v for k, v in vars(a).items() if k not in WHERE_ARGS}


def resume_state(ckpt_path: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the checkpoint's state, whether there was one), refusing one written with other settings; the
    state records ``settings`` for the next resume."""
    import json

    state: dict[str, Any] = load_checkpoint(ckpt_path) or {}
    found = bool(state)
    if found and state.get("args") != json.dumps(settings, sort_keys=True):
        raise SystemExit(f"{ckpt_path} was written with other settings; use another --out or delete it")
    state["args"] = json.dumps(settings, sort_keys=True)
    return state, found


def cpu_env() -> dict[str, Any]:
    """The machine a training-side measurement ran on, for its bench JSON."""
    import platform

    return {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write_bench_json(path: str | Path, manifest: Path, metrics: dict[str, Any]) -> None:
    """An evaluation's metrics with the model's name, its training record and the machine."""
    import json

    info = json.loads(manifest.read_text(encoding="utf-8"))
    out = {"model": info["name"], "metrics": metrics, "training": info.get("training", {}), "env": cpu_env()}
    Path(path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
