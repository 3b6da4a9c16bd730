"""Checkpoint reading: safetensors first, pickles only through ``weights_only``.

Models are built on the meta device and receive their tensors with
``load_state_dict(assign=True)``, so a multi-GB model is never initialised twice.
"""
from __future__ import annotations

import json
import pickle
import stat
import struct
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import CheckpointError, MissingFileError

M = TypeVar("M", bound=nn.Module)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor read into memory of its own rather than as a view of a memory map of the file.

    A map stays resident while any one of its tensors lives, so a model whose weights are replaced
    after loading (cast to bfloat16, packed for the CPU by ``layers.pack_for_cpu``) would keep the
    whole file in memory beside them. The safetensors library checks the header first (offsets
    inside the file, no gaps or overlaps); the data is then read at those offsets."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
        if any(header[n]["dtype"] not in _SAFETENSORS_DTYPES for n in names):
            return load_file(str(path), device="cpu")  # rarer dtypes (float8, unsigned): the library's reader
        tensors = {}
        for name in names:
            info = header[name]
            tensor = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end - begin != tensor.numel() * tensor.element_size():
                raise ValueError(f"tensor {name!r}: {end - begin} bytes of data for shape {info['shape']}")
            if tensor.numel():
                fh.seek(8 + header_len + begin)
                buffer = memoryview(tensor.view(-1).view(torch.uint8).numpy())
                if fh.readinto(buffer) != end - begin:
                    raise ValueError(f"tensor {name!r}: the file ends inside its data")
            tensors[name] = tensor
    return tensors


def read_checkpoint(path: str | Path) -> object:
    """Read a checkpoint file into CPU tensors without executing arbitrary pickled code.

    Zip-format torch files (``torch.save`` since 1.6) are memory-mapped; legacy (non-zip) ones
    cannot be, and are read whole, still through ``weights_only`` unpickling.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        try:
            return _read_safetensors(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from e
    if suffix in PICKLE_SUFFIXES:
        try:
            return torch.load(str(path), map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path}: refused to unpickle: the file holds Python objects other than tensors, which "
                f"weights_only loading does not allow ({_first_line(e)}). Convert it to .safetensors "
                f"with a tool you trust.") from e
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
                IndexError, UnicodeDecodeError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({_first_line(e)})") from e
    raise CheckpointError(f"{path}: unknown checkpoint format {suffix!r}; expected one of "
                          f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}")


def _check_file(path: Path) -> None:
    """A readable, non-empty regular file: anything else gets an error naming the file and the problem."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingFileError(f"checkpoint file not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot access the checkpoint ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: not a regular file (a pipe or device), refused as a checkpoint")
    if st.st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or copy did not finish")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def unwrap_state_dict(obj: object, nesting: Iterable[str] = ("model", "module", "state_dict"),
                      source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state_dict inside a training checkpoint (e.g. LlamaGen's ``ckpt["model"]``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in nesting:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    raise CheckpointError(f"{source}: no state_dict found (top-level keys: {sorted(map(str, obj))[:10]}; "
                          f"looked inside {list(nesting)})")


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                     optional: Iterable[str] = ()) -> None:
    """Raise one short CheckpointError listing every missing, unexpected, misshaped, wrong-dtype
    and non-finite tensor (at most 8 names per kind)."""
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    optional = set(optional)
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in expected]
    present = [k for k in expected if k in sd]
    misshaped = [f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
                 for k in present if tuple(sd[k].shape) != expected[k]]
    wrong_dtype = [f"{k}: file {_dtype_name(sd[k])} vs model {_dtype_name(own[k])}"
                   for k in present if isinstance(sd[k], torch.Tensor) and not _dtype_fits(sd[k], own[k])]
    weights = {name for name, _ in model.named_parameters()}  # buffers may hold -inf on purpose (masks)
    non_finite = [k for k in present if k in weights and isinstance(sd[k], torch.Tensor)
                  and sd[k].is_floating_point() and sd[k].device.type != "meta"
                  and not bool(torch.isfinite(sd[k]).all())]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped),
                         ("wrong dtypes", wrong_dtype), ("NaN or infinite values in", non_finite)):
        if items:
            more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:8])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _dtype_fits(file_t: torch.Tensor, model_t: torch.Tensor) -> bool:
    """Float weights may come in any float precision (converted on load); integer and bool buffers
    must stay integer / bool. Float stored as int64 (or the reverse) is a broken file."""
    if model_t.is_floating_point():
        return file_t.is_floating_point()
    if model_t.dtype == torch.bool:
        return file_t.dtype == torch.bool
    return not file_t.is_floating_point() and not file_t.is_complex() and file_t.dtype != torch.bool


def load_into(model: M, sd: Mapping[str, torch.Tensor], source: str, optional: Iterable[str] = ()) -> M:
    """Strictly load ``sd`` (after :func:`check_state_dict`) by assignment; meta-built models welcome.

    Float tensors stored in another float precision are converted to the model's.
    """
    check_state_dict(model, sd, source, optional)
    own = model.state_dict()
    full = {k: v.to(own[k].dtype) if v.is_floating_point() and v.dtype != own[k].dtype else v
            for k, v in sd.items()}
    for k in optional:  # keep the model's own value for optional buffers the file lacks
        if k not in full and k in own:
            full[k] = own[k] if own[k].device.type != "meta" else torch.zeros(own[k].shape, dtype=own[k].dtype)
    model.load_state_dict(full, strict=True, assign=True)
    return model


def build_on_meta(factory: Callable[[], M]) -> M:
    """The model built without memory or initialisation: its weights come from a checkpoint next."""
    with torch.device("meta"), _SkipRandomInit():
        return factory()


class _SkipRandomInit(TorchFunctionMode):
    """Random fills of meta tensors compute nothing, yet torch's first one (``nn.Embedding``'s ``normal_``)
    imports its Python reference kernels: sympy and ~800 modules, ~1 s and ~70 MB resident for the life
    of the process, paid by every load. On meta tensors they are skipped (``randn`` / ``rand`` become ``empty``);
    everything else runs, so constructors keep out-of-place arithmetic off meta tensors (in-place is native)."""

    FILLS = frozenset({nn.init.normal_, nn.init.uniform_, nn.init.trunc_normal_, nn.init.kaiming_uniform_,
                       nn.init.kaiming_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.orthogonal_,
                       torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.erfinv_, torch.Tensor.exponential_,
                       torch.Tensor.log_normal_, torch.Tensor.cauchy_, torch.Tensor.geometric_,
                       torch.Tensor.bernoulli_, torch.Tensor.random_})  # a mode sees no calls made inside these

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.randn, torch.rand):  # a random buffer that the checkpoint replaces
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k in ("dtype", "device", "requires_grad")})
        if func in self.FILLS:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)
