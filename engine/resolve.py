"""Find checkpoint files: a local models directory first, then the Hugging Face hub cache.

Offline-safe: with ``HF_HUB_OFFLINE=1`` (or ``offline=True``) only files already
on disk are used, and a missing file produces one error saying which file, where
it was looked for, and how to get it.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingFileError

MODELS_DIR_ENV = "ARNODES_MODELS_DIR"


def default_models_dir() -> Path:
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "arnodes" / "models"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_file(filename: str, hf_repo: str | None, models_dir: str | Path | None = None,
                 offline: bool | None = None) -> Path:
    models_dir = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    local = models_dir / filename
    if local.is_file():
        return local
    offline = hub_offline() if offline is None else offline
    looked = [str(local)]
    if hf_repo is not None:
        looked.append(f"the Hugging Face cache for {hf_repo}")
        try:
            from huggingface_hub import hf_hub_download
            return Path(hf_hub_download(repo_id=hf_repo, filename=filename, local_files_only=offline))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes the one clear error below
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:  # pragma: no cover
            reason = ""
    else:
        reason = "not shipped on the hub"
    how = (f"download it from https://huggingface.co/{hf_repo} into {models_dir}" if hf_repo
           else f"put it in {models_dir}")
    mode = " (offline mode: HF_HUB_OFFLINE=1)" if offline else ""
    raise MissingFileError(f"model file {filename!r} not found; looked in {', '.join(looked)}{mode} ({reason}); "
                           f"to get it, {how} (or set ARNODES_MODELS_DIR to the folder that has it)")
