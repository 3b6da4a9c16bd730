"""Size limits, checked before any work: a request too big for the machine is refused with the
numbers, instead of allocating until the kernel kills the process.

Each limit has a default and an environment variable, read at every check (a server or a test
can change it without a restart):

==========================  ==========  =====================================================
variable                    default     what it bounds
==========================  ==========  =====================================================
``ARNODES_MAX_BATCH``       64          images one node makes at once (classes x batch size)
``ARNODES_MAX_SIDE``        16384       width or height of an image a node makes or loads
``ARNODES_MAX_PIXELS``      67108864    pixels of one batch (B x H x W) a node makes or loads
``ARNODES_MAX_NODES``       1000        nodes in one workflow
``ARNODES_MAX_FRAMES``      1           frames LoadImage reads from an animation (1 = the first)
==========================  ==========  =====================================================

On top of these, :func:`check_memory` refuses a request whose estimated working memory is more
than the memory available now (``MemAvailable`` on Linux, or less when a container's cgroup limit
leaves less; free memory on a CUDA device).

Torch-free at import time: the graph layer checks the node count with it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInputError, LimitError

DEFAULTS: dict[str, int] = {
    "ARNODES_MAX_BATCH": 64,
    "ARNODES_MAX_SIDE": 16384,
    "ARNODES_MAX_PIXELS": 64 * 1024 * 1024,
    "ARNODES_MAX_NODES": 1000,
    "ARNODES_MAX_FRAMES": 1,
}
_FLOAT_IMAGE_BYTES = 3 * 4  # an IMAGE pixel: 3 float32 channels
CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_side: int
    max_pixels: int
    max_nodes: int
    max_frames: int


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value}")
    return value


def current() -> Limits:
    """The limits in force now (environment variables over the defaults)."""
    return Limits(_env_int("ARNODES_MAX_BATCH"), _env_int("ARNODES_MAX_SIDE"), _env_int("ARNODES_MAX_PIXELS"),
                  _env_int("ARNODES_MAX_NODES"), _env_int("ARNODES_MAX_FRAMES"))


def check_batch(n: int, what: str) -> None:
    """Refuse a batch of ``n`` images before anything is allocated for it."""
    limit = current().max_batch
    if n > limit:
        raise LimitError(f"{what}: a batch of {n} images is more than the limit of {limit} "
                         f"(ARNODES_MAX_BATCH); split the request")


def check_image_size(batch: int, height: int, width: int, what: str) -> None:
    """Refuse an image (batch) larger than the side / pixel limits or than the memory available."""
    lim = current()
    if height < 1 or width < 1:
        raise InvalidInputError(f"{what}: an image of {width}x{height} pixels is empty")
    if max(height, width) > lim.max_side:
        raise LimitError(f"{what}: {width}x{height} pixels exceeds the limit of {lim.max_side} pixels per side "
                         f"(ARNODES_MAX_SIDE)")
    total = batch * height * width
    if total > lim.max_pixels:
        raise LimitError(f"{what}: {batch} image(s) of {width}x{height} = {total:,} pixels exceeds the limit of "
                         f"{lim.max_pixels:,} pixels per batch (ARNODES_MAX_PIXELS)")
    check_memory(total * _FLOAT_IMAGE_BYTES * 4, what)  # input, output and two temporaries


def check_node_count(n: int) -> None:
    limit = current().max_nodes
    if n > limit:
        raise LimitError(f"workflow has {n} nodes, more than the limit of {limit} (ARNODES_MAX_NODES)")


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for new allocations on ``device`` now; None when it cannot be told."""
    if str(device).startswith("cuda"):
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            # free on the device, plus what torch's caching allocator holds but does not use
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
        except (RuntimeError, AssertionError):
            return None
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        free = None
    container = cgroup_memory()
    if container is not None:  # in a container the kernel kills at the cgroup's limit, not at the host's
        limit, used = container
        free = max(0, limit - used) if free is None else min(free, max(0, limit - used))
    return free


def cgroup_memory() -> tuple[int, int] | None:
    """(limit, usage) in bytes of this process's memory cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            raw = (CGROUP_ROOT / limit_file).read_text().strip()
            if raw == "max":
                return None
            limit = int(raw)
            used = int((CGROUP_ROOT / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        return None if limit >= _UNLIMITED else (limit, used)
    return None


def check_memory(estimate: int, what: str, device: str = "cpu") -> None:
    """Refuse work whose estimated memory (bytes) is more than what is available on ``device``."""
    free = available_bytes(device)
    if free is not None and estimate > free:
        raise LimitError(f"{what}: needs about {_gib(estimate)} of memory but only {_gib(free)} is available on "
                         f"{device}; make the request smaller")


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"
