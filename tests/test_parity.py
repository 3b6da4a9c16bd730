"""Parity with the official implementations (DESIGN.md section 5).

Runs every case directory under tests/fixtures/reference/<family>/ plus every
directory listed in ARNODES_PARITY_FIXTURES (os.pathsep-separated). A case's
family is recognised by its files; each family module exposes CHECKS, a dict
name -> check(case_dir) run as one test each.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import parity_controlar
import parity_llamagen
import parity_llamagen_t2i
import parity_var
from conftest import REFERENCE_DIR

FAMILIES = {
    "var": (("vae.safetensors", "var.safetensors", "cases.safetensors"), parity_var.CHECKS),
    "llamagen": (("vq.safetensors", "gpt.safetensors", "cases.safetensors"), parity_llamagen.CHECKS),
    # a t2i case has a text encoder and no image tokenizer: recognised before controlar, whose files it also has
    "llamagen_t2i": (("gpt.safetensors", "t5_tiny.safetensors", "cases.safetensors"), parity_llamagen_t2i.CHECKS),
    "controlar": (("gpt.safetensors", "cases.safetensors"), parity_controlar.CHECKS),  # no tokenizer: after llamagen
}


def family_of(case_dir: Path) -> str | None:
    for family, (files, _) in FAMILIES.items():
        if all((case_dir / f).is_file() for f in files):
            return family
    return None


def discover_cases() -> list[Path]:
    dirs: list[Path] = []
    for family in FAMILIES:
        root = REFERENCE_DIR / family
        if root.is_dir():
            dirs += sorted(p for p in root.iterdir() if p.is_dir())
    for entry in filter(None, os.environ.get("ARNODES_PARITY_FIXTURES", "").split(os.pathsep)):
        path = Path(entry)
        # a case directory itself, or a folder of case directories
        dirs += [path] if family_of(path) else sorted(p for p in path.iterdir() if p.is_dir())
    return dirs


def _params():
    params = []
    for case in discover_cases():
        family = family_of(case)
        if family is None:
            params.append(pytest.param(case, None, id=f"{case.name}-unrecognised"))
            continue
        for name in FAMILIES[family][1]:
            params.append(pytest.param(case, (family, name), id=f"{family}-{case.name}-{name}"))
    return params


def test_reference_cases_present():
    found = {family_of(c) for c in discover_cases()}
    assert {"var", "llamagen", "llamagen_t2i", "controlar"} <= found, f"reference fixtures missing: found families {found}"


@pytest.mark.parametrize("case_dir,check", _params())
def test_parity(case_dir: Path, check):
    assert check is not None, f"{case_dir}: not a recognised fixture case (files: {sorted(os.listdir(case_dir))})"
    family, name = check
    FAMILIES[family][1][name](case_dir)
