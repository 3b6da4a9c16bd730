"""Weight-only int8 / int4 quantization: primitives, modules, model accuracy, save/load, refusals."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arnodes.engine.errors import CheckpointError, InvalidInputError, UnknownNameError, UnsupportedError
from arnodes.engine.quantize import (QUANT_MODES, WeightOnlyInt4Linear, WeightOnlyInt8Embedding,
                                     WeightOnlyInt8Linear, check_supported, dequantize_int4, dequantize_int8,
                                     int4_kernel_ok, int8_kernel_ok, kernel_dtype,
                                     load_quantized_into, pack_int4, parse_quant, quantize_int4, quantize_int8,
                                     quantize_model, quantized_bytes, save_quantized, target_layers, target_linears,
                                     unpack_int4)

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
VAR_CASE = REF / "var" / "tiny_a"
LG_CASE = REF / "llamagen" / "tiny_a"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# ---- primitives --------------------------------------------------------------------------------
def test_int8_error_bound():
    w = torch.randn(64, 96)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (64,)
    err = (dequantize_int8(q, s) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()  # round-to-nearest: at most half a step per channel


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_error_bound_and_packing(g):
    w = torch.randn(48, 256)
    packed, sz = quantize_int4(w, g)
    assert packed.dtype == torch.uint8 and packed.shape == (48, 128) and sz.shape == (256 // g, 48, 2)
    scale = sz[..., 0].T.repeat_interleave(g, dim=1)  # (N, K)
    err = (dequantize_int4(packed, sz, g) - w).abs()
    assert (err <= scale / 2 + 1e-5).all()
    q = torch.randint(0, 16, (5, 8))
    assert torch.equal(unpack_int4(pack_int4(q)), q.to(torch.uint8))


def test_int4_refuses_indivisible_width():
    with pytest.raises(UnsupportedError, match="group size"):  # a typed error, never a bare ValueError
        quantize_int4(torch.randn(4, 48), 32)
    with pytest.raises(UnsupportedError, match="in_features 48"):
        WeightOnlyInt4Linear(48, 8, group_size=32)


# ---- modules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["int8", "int4-g32", "int4-g128"])
def test_quantized_linear_matches_float(mode):
    lin = nn.Linear(256, 192)
    x = torch.randn(3, 5, 256)
    spec = parse_quant(mode)
    q = WeightOnlyInt8Linear.from_float(lin) if spec.bits == 8 else WeightOnlyInt4Linear.from_float(lin, spec.group_size)
    with torch.no_grad():
        ref, out = lin(x), q(x)
    assert out.shape == ref.shape
    assert cosine(out, ref) >= (0.9999 if spec.bits == 8 else 0.995)


def test_int8_kernel_matches_dequantize_path():
    """float32 input on CPU runs the kernel in bf16 (kernel_dtype): bf16-close to the exact product."""
    lin = nn.Linear(128, 64)
    q = WeightOnlyInt8Linear.from_float(lin)
    x = torch.randn(4, 128)
    assert kernel_dtype(x) == torch.bfloat16 and kernel_dtype(x.bfloat16()) == torch.bfloat16
    with torch.no_grad():
        ref = x @ dequantize_int8(q.weight, q.scales).T + lin.bias
        out = q(x)
        assert out.dtype == torch.float32
        assert torch.allclose(out, ref, atol=0.02) and cosine(out, ref) > 0.9999
        assert torch.allclose(q.to(torch.bfloat16)(x.bfloat16()).float(), ref, atol=0.1)


@pytest.mark.parametrize("shape", [(64, 256, 128), (48, 192, 32), (40, 64, 32)])
def test_int4_kernel_matches_dequantize_path(shape):
    """The CPU int4 kernel (when this torch has it) agrees with dequantize + matmul; N % 16 != 0
    (the 40-row case) falls back to the dequantize path."""
    N, K, G = shape
    lin = nn.Linear(K, N)
    q = WeightOnlyInt4Linear.from_float(lin, G)
    x = torch.randn(5, K)
    with torch.no_grad():
        ref = x @ dequantize_int4(q.weight, q.scales_and_zeros, G).T + lin.bias
        out = q(x)
    assert cosine(out, ref) > 0.9999 and torch.allclose(out, ref, atol=0.05)
    uses_kernel = q._kernel_weight is not None
    assert uses_kernel == (N % 16 == 0 and int4_kernel_ok(torch.device("cpu"), torch.bfloat16))


# ---- names and devices -------------------------------------------------------------------------
def test_unknown_quant_name_lists_modes():
    with pytest.raises(UnknownNameError) as e:
        parse_quant("int3")
    assert "int4-g128" in str(e.value) and "int8" in str(e.value)
    assert [parse_quant(m).mode for m in QUANT_MODES] == list(QUANT_MODES)


def test_unsupported_device_refused_with_alternatives():
    with pytest.raises(UnsupportedError, match="only 'none'"):
        check_supported("int8", "meta")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="on 'cpu' the modes"):
            check_supported("int4-g32", "cuda")
    assert check_supported("none", "meta").bits == 0
    assert check_supported("int4-g64", "cpu").group_size == 64


# ---- models ------------------------------------------------------------------------------------
def _var():
    from parity_var import load_case
    cfg, tok, var, c = load_case(VAR_CASE)
    return var, (c["var_tf_labels"], c["var_tf_input"])


def _llamagen():
    from parity_llamagen import _load
    _, _, _, gpt, c = _load(str(LG_CASE))
    return gpt, (c["gpt_tf_labels"], c["gpt_tf_tokens"])


@pytest.mark.parametrize("family", ["var", "llamagen"])
def test_model_logits_close_to_float(family):
    """Fixtures: tiny and untrained, so their logits are nearly flat; int4-g32 gets a looser bar here
    and the issue's int4-g128 bar is checked on wider models below."""
    model, args = _var() if family == "var" else _llamagen()
    with torch.no_grad():
        ref = model(*args)
        for mode, bar in (("int8", 0.999), ("int4-g32", 0.98)):
            q = quantize_model(copy.deepcopy(model), mode)
            assert len(target_linears(q)) == len(target_linears(model)) > 0
            assert not q.quant_skipped  # the fixture widths are multiples of 32
            kinds = {type(m) for _, m in target_linears(q)} - {nn.Linear}
            assert kinds == {WeightOnlyInt8Linear if mode == "int8" else WeightOnlyInt4Linear}
            head = q.head if family == "var" else q.output
            assert isinstance(head, WeightOnlyInt8Linear if mode == "int8" else WeightOnlyInt4Linear)
            assert head.exact == (mode == "int8") and not any(m.exact for _, m in target_linears(q))
            x = torch.randn(3, head.in_features)
            w = dequantize_int8(head.weight, head.scales) if mode == "int8" else \
                dequantize_int4(head.weight, head.scales_and_zeros, head.group_size)
            exact = F.linear(x, w) + (head.bias if head.bias is not None else 0)
            tol = 1e-5 if mode == "int8" else 0.05  # int8: float32 logits, no bf16 rounding
            assert torch.allclose(head(x), exact, atol=tol)
            if family == "llamagen":
                assert isinstance(q.tok_embeddings, WeightOnlyInt8Embedding)  # int8 in every mode
            assert cosine(q(*args), ref) >= bar, mode


def _wide_models():
    """Random-init models 256 wide (so int4-g128 quantizes every layer), small enough for CI."""
    from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
    from arnodes.engine.models.var import VAR, VARConfig
    torch.manual_seed(0)
    lg = LlamaGen(LlamaGenConfig(dim=256, n_layer=3, n_head=4, vocab_size=1024, num_classes=10, block_size=64))
    var_cfg = VARConfig(num_classes=10, depth=3, embed_dim=256, num_heads=4, patch_nums=(1, 2, 3, 4),
                        vocab_size=512, cvae=16)
    var = VAR(var_cfg)
    var_args = (torch.tensor([1, 4]), torch.randn(2, var_cfg.tokens_per_image - 1, 16))
    return [(lg.eval(), (torch.tensor([1, 4]), torch.randint(0, 1024, (2, 64)))), (var.eval(), var_args)]


def test_issue_targets_on_wider_models():
    """int8: cosine >= 0.999 and teacher-forced argmax agreement >= 95 %; int4-g128: cosine >= 0.99."""
    for model, args in _wide_models():
        with torch.no_grad():
            ref = model(*args)
            q8 = quantize_model(copy.deepcopy(model), "int8")
            out8 = q8(*args)
            assert cosine(out8, ref) >= 0.999
            assert (out8.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
            q4 = quantize_model(copy.deepcopy(model), "int4-g128")
            assert not q4.quant_skipped
            assert cosine(q4(*args), ref) >= 0.99


def test_quantized_bytes_shrink_the_whole_model():
    """Heads and the token table are quantized too, so the whole model shrinks, not just the blocks."""
    for model, _ in _wide_models():
        bf16 = quantized_bytes(copy.deepcopy(model).to(torch.bfloat16))
        for mode, limit in (("int8", 0.55), ("int4-g128", 0.35)):
            q = quantize_model(copy.deepcopy(model), mode).to(torch.bfloat16)
            size = quantized_bytes(q)
            assert size["quantized_layers"] < bf16["quantized_layers"] * (0.51 if mode == "int8" else 0.30)
            assert size["total"] < bf16["total"] * limit, (type(model).__name__, mode, size, bf16)
            roles = {role for _, m, role in target_layers(q) if not isinstance(m, (nn.Linear, nn.Embedding))}
            assert roles >= {"block", "head"}


def test_indivisible_layers_stay_float_and_are_reported():
    model, args = _llamagen()  # dim 64: wqkv/wo/w1/w3 and the head take 64 inputs, w2 takes 256
    q = quantize_model(copy.deepcopy(model), "int4-g128")
    assert sorted(q.quant_skipped) == sorted(n for n, m, role in target_layers(model)
                                             if role != "embedding" and m.in_features % 128)
    assert "output" in q.quant_skipped
    assert isinstance(q.layers[0].feed_forward.w2, WeightOnlyInt4Linear)
    assert isinstance(q.layers[0].attention.wqkv, nn.Linear)
    with torch.no_grad():
        assert cosine(q(*args), model(*args)) >= 0.99


@pytest.mark.parametrize("mode", ["int8", "int4-g64"])
def test_save_load_round_trip_is_bit_identical(tmp_path, mode):
    from arnodes.engine.checkpoint import build_on_meta
    from arnodes.engine.models.var import VAR
    model, args = _var()
    q = quantize_model(copy.deepcopy(model), mode)
    path = save_quantized(q, tmp_path / "q.safetensors")
    fresh = build_on_meta(lambda: VAR(model.cfg))
    load_quantized_into(fresh, path, expected_mode=mode)
    assert fresh.quant_mode == mode
    with torch.no_grad():
        assert torch.equal(fresh(*args), q(*args))


def test_loader_quant_and_prequantized_manifest(tmp_path):
    """load_manifest(quant=...) quantizes; a manifest pointing at a saved quantized file loads it as is."""
    from arnodes.engine.loader import load_manifest
    from parity_var import msvq_config, var_config
    cfg = json.loads((VAR_CASE / "config.json").read_text())
    import dataclasses
    manifest = {"name": "tiny-var", "family": "var", "image_size": cfg["image_size"],
                "tokenizer": {"kind": "msvq", "config": dataclasses.asdict(msvq_config(cfg)),
                              "file": str(VAR_CASE / "vae.safetensors")},
                "generator": {"kind": "var", "config": dataclasses.asdict(var_config(cfg)),
                              "file": str(VAR_CASE / "var.safetensors")}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    bundle = load_manifest(tmp_path / "m.json", quant="int8")
    assert bundle.generator.quant_mode == "int8"
    save_quantized(bundle.generator, tmp_path / "var-int8.safetensors")
    manifest["generator"]["file"] = "var-int8.safetensors"
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    again = load_manifest(tmp_path / "m.json")  # the file's own mode
    _, args = _var()
    with torch.no_grad():
        assert torch.equal(again.generator(*args), bundle.generator(*args))
    with pytest.raises(InvalidInputError, match="int8"):
        load_manifest(tmp_path / "m.json", quant="int4-g32")


# ---- corrupt / mismatched files ----------------------------------------------------------------
def _saved(tmp_path, mode="int8"):
    model, _ = _var()
    path = save_quantized(quantize_model(copy.deepcopy(model), mode), tmp_path / "q.safetensors")
    return model, path


def test_corrupt_file_is_checkpoint_error(tmp_path):
    model, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="q.safetensors"):
        load_quantized_into(copy.deepcopy(model), path)


def test_mismatched_files_are_named(tmp_path):
    from safetensors.torch import load_file, save_file
    model, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="'int8' weights but 'int4-g32' was requested"):
        load_quantized_into(copy.deepcopy(model), path, expected_mode="int4-g32")
    with pytest.raises(CheckpointError, match="already 'int4-g64'"):
        load_quantized_into(quantize_model(copy.deepcopy(model), "int4-g64"), path)
    sd = load_file(str(path))
    meta = {"format": "arnodes-quantized", "version": "1", "quant": "int8", "skipped": "[]"}
    missing = {k: v for k, v in sd.items() if k != "blocks.0.ffn.fc1.scales"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="missing keys.*blocks.0.ffn.fc1.scales"):
        load_quantized_into(copy.deepcopy(model), tmp_path / "missing.safetensors")
    shaped = dict(sd, **{"blocks.1.attn.proj.weight": sd["blocks.1.attn.proj.weight"][:, :64].contiguous()})
    save_file(shaped, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="wrong shapes.*blocks.1.attn.proj.weight"):
        load_quantized_into(copy.deepcopy(model), tmp_path / "shape.safetensors")
    typed = dict(sd, **{"blocks.1.attn.proj.weight": sd["blocks.1.attn.proj.weight"].float()})
    save_file(typed, str(tmp_path / "dtype.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="wrong (integer )?dtypes.*blocks.1.attn.proj.weight"):
        load_quantized_into(copy.deepcopy(model), tmp_path / "dtype.safetensors")
    save_file(sd, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not an arnodes quantized file"):
        load_quantized_into(copy.deepcopy(model), tmp_path / "plain.safetensors")


def test_int8_layers_dequantize_on_cuda_instead_of_torchs_naive_kernel():
    """torch's CUDA _weight_int8pack_mm is a float32 loop per output element; on CUDA the layer takes the
    dequantize-then-matmul form that the compiled step fuses (decided without touching a GPU)."""
    assert not int8_kernel_ok(torch.device("cuda"), torch.bfloat16)
    assert int8_kernel_ok(torch.device("cpu"), torch.bfloat16)
