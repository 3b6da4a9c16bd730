"""Reading and writing image files safely: the file half of io_image's nodes.

Reading (decisions, DESIGN.md section 9):
- only regular files inside the input directory (no folders, FIFOs or device files);
- the size in the header is checked against our pixel limits (``engine.limits``) *before*
  anything is decoded, and Pillow's own decompression-bomb check stays on;
- truncated or corrupt files and non-images with an image extension are refused clearly;
- animations: the first ``ARNODES_MAX_FRAMES`` frames (default 1: the first frame only;
  ComfyUI reads every frame, which turned a 300-frame GIF into 300 outputs);
- pixel values keep their real range: 8-bit modes / 255, 16-bit integer modes
  (``I;16*``, and ``I`` whose values fit 16 bits) / 65535, other ``I`` images by their
  maximum, float ``F`` images taken as [0, 1] and clipped; CMYK, palette, LA, ... are
  converted by Pillow; alpha (an ``A`` band) becomes the mask, as in ComfyUI.

Writing: each output name is claimed atomically, so concurrent runs never overwrite each
other; the PNG is written to a temporary file (name unrelated to the output's) and
hard-linked into place, so a reader never sees a half-written file and an existing output
is never replaced. Files get mode 0666 minus the umask, like any file a program creates.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from ..engine.errors import InvalidInputError, LimitError, MissingFileError
from ..engine.limits import check_image_size
from ..engine.limits import current as current_limits
from .base import ExecutionContext

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def open_image(ctx: ExecutionContext, name: str, what: str = "input 'image'") -> Image.Image:
    """Open an input image (header only) after the sandbox, file-type and size checks."""
    path = ctx.input_path(name)
    if not path.exists():
        raise MissingFileError(f"{what}: file {name!r} not found in the input directory ({ctx.input_dir})")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise InvalidInputError(f"{what}: {name!r} is not a regular file (a folder, pipe or device)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise LimitError(f"{what}: {name!r} is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInputError(f"{what}: cannot read {name!r} as an image ({_short(e)})") from None
    frames = min(getattr(img, "n_frames", 1) or 1, current_limits().max_frames)
    check_image_size(frames, img.height, img.width, f"{what} {name!r}")
    return img


def frames(img: Image.Image, name: str, what: str = "input 'image'") -> Iterator[Image.Image]:
    """Decoded, EXIF-rotated frames (at most ARNODES_MAX_FRAMES); a corrupt file is refused clearly."""
    limit = current_limits().max_frames
    try:
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            if i >= limit:
                return
            frame.load()
            yield ImageOps.exif_transpose(frame)
            if img.format == "MPO":  # a multi-picture JPEG is one picture (as ComfyUI reads it)
                return
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidInputError(f"{what}: {name!r} is truncated or corrupt ({_short(e)})") from None


def to_float_arrays(frame: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(rgb [H, W, 3] float32 in [0, 1], alpha [H, W] in [0, 1] or None), with the mode's real range."""
    mode = frame.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = np.asarray(frame).astype(np.float32)  # (H, W)
        if mode == "F":
            gray = np.nan_to_num(gray, nan=0.0, posinf=1.0, neginf=0.0)
        elif mode in _SIXTEEN_BIT_MODES or (gray.size and gray.min() >= 0 and gray.max() <= 65535):
            gray = gray / 65535.0
        else:  # 32-bit integer images have no fixed white point: use their own range
            lo, hi = float(gray.min()), float(gray.max())
            gray = (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)
        gray = np.clip(gray, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), None
    alpha = None
    if "A" in frame.getbands():
        alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
    rgb = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, alpha


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


# --------------------------------------------------------------------------- writing

def claim_and_write(folder: Path, base: str, start: int, data: bytes) -> Path:
    """Write ``data`` as ``{base}_{counter:05}_.png`` for the first counter >= ``start`` that is free.

    The temporary file has a random name (never derived from ``base``) and is linked into
    place only when complete; `os.link` fails if the name exists, which makes the claim atomic.
    """
    tmp = folder / f".arnodes-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode 0666 & ~umask
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        counter = start
        while True:
            final = folder / f"{base}_{counter:05}_.png"
            try:
                _link_exclusive(tmp, final)
                return final
            except FileExistsError:
                counter += 1
                if counter - start > 100_000:
                    raise InvalidInputError(f"no free output name for prefix {base!r} in {folder}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _link_exclusive(src: Path, dst: Path) -> None:
    """Create ``dst`` with ``src``'s content, failing with FileExistsError if ``dst`` exists."""
    try:
        os.link(src, dst)
        return
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    # no hard links on this filesystem: claim the name exclusively, then move the data over it
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    os.replace(src, dst)
