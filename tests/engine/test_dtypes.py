"""Every task in every dtype, for both families (tiny fixture models), and bf16 vs float32 agreement.

The dtype is the loader's choice: the generator really runs in it (its parameters are of that dtype),
the tokenizer stays float32, and every task returns a valid image.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_workflows import TINY_CONTROLAR, TINY_LLAMAGEN, TINY_VAR, tiny_models_dir

from arnodes.engine import tasks
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.control import ControlCondition
from arnodes.engine.generate import generate
from arnodes.engine.loader import load_bundle
from arnodes.engine.sampling import SamplingParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
RUN = tasks.RunSettings(params=SamplingParams(top_k=0, top_p=1.0), seed=3)


@pytest.fixture(scope="module", params=[(f, d) for f in (TINY_VAR, TINY_CONTROLAR) for d in DTYPES],
                ids=lambda p: f"{p[0].split('.')[0]}-{p[1]}")
def bundle(request):
    name, dtype = request.param
    b = load_bundle(str(tiny_models_dir() / name), dtype=DTYPES[dtype])
    return b


def _source(bundle) -> torch.Tensor:
    s = tasks.model_size(bundle)
    y, x = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    return torch.stack([x, y, x * y]).unsqueeze(0)  # (1, 3, s, s) in [-1, 1]


def _valid(img: torch.Tensor, height: int, width: int) -> None:
    assert img.shape == (1, 3, height, width) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.abs().max() <= 1.05 and img.std() > 0.02  # bicubic may overshoot a hair


TASKS = {
    "generate": lambda b, c, src, half: tasks.generate_images(b, c, RUN),
    "inpaint": lambda b, c, src, half: tasks.inpaint(b, c, src, half, RUN),
    "edit": lambda b, c, src, half: tasks.inpaint(b, Conditioning((7,), cfg=2.0), src, half, RUN),
    "outpaint": lambda b, c, src, half: tasks.outpaint(b, c, src, 16, 0, 16, 0, 4, RUN),
    "variation": lambda b, c, src, half: tasks.variation(b, c, src, 0.5, RUN),
    "control": lambda b, c, src, half: tasks.control(b, c, src, "canny", 1.0, RUN),
    "controlled_inpaint": lambda b, c, src, half: tasks.inpaint(
        b, dataclasses.replace(c, control=ControlCondition("canny", src, 1.0)), src, half, RUN),
    "super_resolve": lambda b, c, src, half: tasks.super_resolve(
        b, c, src[..., ::2, ::2], 2, RUN),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_runs_in_the_loaded_dtype(bundle, task):
    want = next(p.dtype for p in bundle.generator.parameters() if p.is_floating_point())
    assert want in DTYPES.values()
    assert {p.dtype for p in bundle.tokenizer.parameters()} == {torch.float32}  # decoding quality
    src = _source(bundle)
    size = src.shape[-1]
    half = torch.zeros(1, size, size)
    half[:, :, size // 2:] = 1  # regenerate the right half
    out = TASKS[task](bundle, Conditioning((3,), cfg=2.0), src, half)
    _valid(out, size, size + 32 if task == "outpaint" else size)  # outpaint returns the padded canvas
    if task in ("inpaint", "controlled_inpaint"):  # the kept half is the input, exactly, in any dtype
        assert torch.equal(out[..., : size // 2], src[..., : size // 2])


def test_generator_dtype_is_the_loaders_choice():
    for name in (TINY_VAR, TINY_LLAMAGEN):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            b = load_bundle(str(tiny_models_dir() / name), dtype=dtype)
            assert {p.dtype for p in b.generator.parameters() if p.is_floating_point()} == {dtype}


@pytest.mark.parametrize("name", [TINY_VAR, TINY_LLAMAGEN])
def test_float16_generates(name):
    b = load_bundle(str(tiny_models_dir() / name), dtype=torch.float16)
    _valid(tasks.generate_images(b, Conditioning((1, 2), cfg=2.0), RUN)[:1], tasks.model_size(b), tasks.model_size(b))


def test_bf16_greedy_tokens_agree_with_float32_on_the_bundled_model():
    """A trained model (the bundled emoji VAR), greedy decoding, 64 classes: bf16 picks the float32 token
    at the large majority of positions. Measured: v1 bundle 98 %; v2 bundle (four styles, flatter logits,
    so more near-ties, and a first disagreement changes every later scale's input) 88 % on 16 classes
    (Intel), 81 / 96 / 97 / 95 % on four sets of 16 (AMD Zen 4: one unlucky set is why 64 are asked);
    float16 100 %."""
    cond = Conditioning(tuple(c for offset in (0, 7, 13, 19) for c in range(offset, 400, 25)), cfg=1.0)
    greedy = SamplingParams(top_k=1)
    ref = generate(load_bundle("emoji-var"), cond, params=greedy, seed=0)
    for dtype, floor in ((torch.bfloat16, 0.85), (torch.float16, 0.98)):
        out = generate(load_bundle("emoji-var", dtype=dtype), cond, params=greedy, seed=0)
        same = sum(int((a == b).sum()) for a, b in zip(ref.grids, out.grids))
        total = sum(a.numel() for a in ref.grids)
        assert same / total >= floor, f"{dtype}: {same}/{total} greedy tokens agree with float32"


def test_bf16_teacher_forced_argmax_agrees_with_float32_llamagen():
    import parity_llamagen as pl
    from test_parity import REFERENCE_DIR
    _, _, _, gpt, c = pl._load(str(REFERENCE_DIR / "llamagen" / "tiny_a"))
    with torch.no_grad():
        ref = gpt(c["gpt_tf_labels"], c["gpt_tf_tokens"]).argmax(-1)
        out = copy.deepcopy(gpt).to(torch.bfloat16)(c["gpt_tf_labels"], c["gpt_tf_tokens"]).argmax(-1)
    assert (ref == out).float().mean() >= 0.9


@pytest.mark.parametrize("name", [TINY_VAR, TINY_LLAMAGEN])
def test_a_bf16_bundle_decodes_in_bf16_and_encodes_in_float32(name):
    """The same tokens decode to nearly the same image in a bfloat16 bundle as in a float32 one, but not to
    the same bits (the decoder ran under bfloat16 autocast); encoding an image gives the same tokens."""
    b32 = load_bundle(str(tiny_models_dir() / name))
    b16 = load_bundle(str(tiny_models_dir() / name), dtype=torch.bfloat16)
    canvas = tasks.encode(b32, _source(b32))
    assert all(torch.equal(a, c) for a, c in zip(canvas.grids, tasks.encode(b16, _source(b16)).grids))
    img32, img16 = tasks.decode(b32, canvas), tasks.decode(b16, canvas)
    assert img16.dtype == torch.float32 and img16.shape == img32.shape
    diff = (img16 - img32).abs()
    assert 0 < diff.max() and diff.mean() < 0.02, (diff.max(), diff.mean())
    f16 = load_bundle(str(tiny_models_dir() / name), dtype=torch.float16)
    assert torch.equal(tasks.decode(f16, canvas), img32)  # float16 decodes in float32
