"""Table-driven construction: a ``kind`` names a module and the classes it provides, and a JSON
config dict becomes that kind's dataclass config. Shared by the model loader and the control
adapters so both refuse unknown kinds and unknown fields the same way."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .errors import InvalidInputError


def kind_classes(table: dict[str, tuple[str, str, str]], kind: str, package: str, what: str) -> tuple[type, type]:
    """(main class, config class) of ``kind``; ``table`` maps kind -> (module relative to ``package``, names)."""
    if kind not in table:
        raise InvalidInputError(f"unknown {what} kind {kind!r}; expected one of {sorted(table)}")
    mod_name, main_cls, cfg_cls = table[kind]
    mod = importlib.import_module(mod_name, package=package)
    return getattr(mod, main_cls), getattr(mod, cfg_cls)


def config_from_json(cfg_cls: type, data: dict[str, Any], what: str) -> Any:
    """A config dataclass from its JSON form: unknown fields are refused, lists become tuples, and a
    config with nested configs builds them itself (``from_dict``)."""
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidInputError(f"{what} config has unknown fields {unknown}; known: {sorted(names)}")
    if hasattr(cfg_cls, "from_dict"):
        return cfg_cls.from_dict(data)
    return cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
