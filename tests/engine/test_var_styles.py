"""A style condition on next-scale models: an embedding added to the class, "any" = classifier-free row."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from arnodes.engine.classes import ClassNames
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import CheckpointError, InvalidInputError, UnknownNameError
from arnodes.engine.generate import generate
from arnodes.engine.loader import ModelBundle, _styles
from arnodes.engine.models.var import VAR, VARConfig
from arnodes.engine.sampling import SamplingParams
from arnodes.training.restyle import add_style_table
from parity_var import load_case

CASE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "var" / "tiny_a"
STYLES = ("flat", "shaded", "outline")


def _bundle(var: VAR, tok, cfg: dict, styles: tuple[str, ...] = ()) -> ModelBundle:
    names = ClassNames([f"class {i}" for i in range(var.num_classes)])
    return ModelBundle(name="tiny", family="var", tokenizer=tok, generator=var, classes=names,
                       image_size=cfg["image_size"], styles=styles)


@pytest.fixture(scope="module")
def plain_and_styled():
    cfg, tok, var, _ = load_case(CASE)
    styled = add_style_table(var, len(STYLES)).eval()
    return _bundle(var, tok, cfg), styled, tok, cfg


def _tokens(bundle: ModelBundle, cond: Conditioning, seed: int = 0) -> torch.Tensor:
    out = generate(bundle, cond, None, params=SamplingParams(top_k=20), seed=seed)
    return torch.cat([g.flatten(1) for g in out.grids], 1)


def test_zero_style_table_starts_as_the_model_it_extends(plain_and_styled) -> None:
    plain, styled, tok, cfg = plain_and_styled
    bundle = _bundle(styled, tok, cfg, STYLES)
    for style in (None, (1, 1)):
        cond = Conditioning((3, 7), cfg=2.0, style_ids=style)
        assert torch.equal(_tokens(bundle, cond), _tokens(plain, Conditioning((3, 7), cfg=2.0)))


def test_style_changes_the_drawing_and_any_is_the_last_row(plain_and_styled) -> None:
    _, styled, tok, cfg = plain_and_styled
    model = VAR(styled.cfg).eval()
    model.load_state_dict(styled.state_dict())
    with torch.no_grad():
        model.style_emb.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    bundle = _bundle(model, tok, cfg, STYLES)
    labels = torch.tensor([3, 7])
    implicit = model.conditioning(labels).class_BD
    explicit = model.conditioning(labels, torch.full_like(labels, len(STYLES))).class_BD
    assert torch.equal(implicit, explicit)
    a = _tokens(bundle, Conditioning((3, 7), cfg=2.0, style_ids=(0, 0)))
    b = _tokens(bundle, Conditioning((3, 7), cfg=2.0, style_ids=(2, 2)))
    assert (a != b).float().mean() > 0.2
    assert torch.equal(a, _tokens(bundle, Conditioning((3, 7), cfg=2.0, style_ids=(0, 0))))  # same seed, same style


def test_style_on_a_model_without_styles_is_refused(plain_and_styled) -> None:
    plain, _, _, _ = plain_and_styled
    with pytest.raises(InvalidInputError, match="no styles"):
        _tokens(plain, Conditioning((1,), style_ids=(0,)))


def test_bundle_style_names_resolve_case_insensitively() -> None:
    bundle = ModelBundle(name="m", family="var", tokenizer=None, generator=None, classes=ClassNames(["a"]),
                         image_size=64, styles=("noto", "twemoji"))
    assert bundle.style_id("Twemoji") == 1 and bundle.style_id("any") is None and bundle.style_id("") is None
    with pytest.raises(UnknownNameError, match="known: any, noto, twemoji"):
        bundle.style_id("comic")


def test_manifest_styles_must_match_the_generator(tmp_path) -> None:
    cfg = dataclasses.replace(VARConfig(), num_styles=2)
    assert _styles({"styles": ["a", "b"]}, cfg, tmp_path) == ("a", "b")
    with pytest.raises(CheckpointError, match="1 style names for a generator with 2 styles"):
        _styles({"styles": ["a"]}, cfg, tmp_path)
    with pytest.raises(CheckpointError, match="reserved"):
        _styles({"styles": ["a", "Any"]}, cfg, tmp_path)
    with pytest.raises(CheckpointError, match="list of names"):
        _styles({"styles": "a,b"}, cfg, tmp_path)
    assert json.dumps(_styles({}, VARConfig(), tmp_path)) == "[]"
