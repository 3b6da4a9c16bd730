"""LlamaGen text-to-image: released layouts, caption masking in the cached path, text conditioning, T5 encoder.

Parity with the official code on the fixtures runs in tests/test_parity.py (parity_llamagen_t2i.CHECKS);
this file covers what the fixtures do not pin: full-size layouts, cached == uncached on other configs
(GQA, a short caption), speculative decoding under the mask, errors, and the encoder's loading and
truncation.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arnodes.engine.checkpoint import build_on_meta, load_into
from arnodes.engine.conditioning import Conditioning, TextCondition
from arnodes.engine.errors import ArnodesError, InvalidInputError, MissingFileError
from arnodes.engine.generate.decoders import DecodeOptions
from arnodes.engine.generate.next_scale import class_labels
from arnodes.engine.generate.next_token import generate_tokens
from arnodes.engine.guidance import cfg_combine, llamagen_guided_step
from arnodes.engine.loader import build_module, preset_config
from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
from arnodes.engine.sampling import SamplingParams
from arnodes.engine.text import T5TextEncoder, caption_condition, encode_prompts, load_text_encoder

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "llamagen_t2i"
LAYOUTS = json.loads((REF / "real_checkpoint_layouts.json").read_text())
CASE = REF / "tiny_a"
GREEDY = SamplingParams(top_k=1, top_p_style="llamagen")


# ---- released checkpoints ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_released_t2i_layouts_build_on_meta_and_load_strictly(name):
    entry = LAYOUTS[name]
    size = entry["image_size"] // entry["downsample"]
    cfg = dataclasses.replace(preset_config("llamagen", "GPT-XL-t2i"), block_size=size * size)
    assert cfg == LlamaGenConfig.from_official(entry["model_args"])
    assert cfg.ffn_hidden == entry["ffn_hidden_dim"]
    model = build_on_meta(lambda: LlamaGen(cfg))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(v.numel() for v in model.state_dict().values()) == entry["n_params_incl_buffers"]
    layout: dict[str, tuple[int, ...]] = {}
    for key, shape in entry["keys_layer0_and_globals"].items():
        if key.startswith("layers.0."):
            layout.update({f"layers.{i}.{key[len('layers.0.'):]}": tuple(shape) for i in range(cfg.n_layer)})
        else:
            layout[key] = tuple(shape)
    assert own == layout
    sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    load_into(model, LlamaGen.remap_state_dict(sd), name)  # strict: nothing missing, nothing extra
    model.post_load()
    assert model.freqs_cis.shape == (cfg.cls_token_num + cfg.block_size, cfg.head_dim // 2, 2)
    assert not model.freqs_cis[: cfg.cls_token_num].any()  # caption positions: all-zero rotary rows


def test_t2i_checkpoint_without_the_null_caption_is_refused():
    config = json.loads((CASE / "config.json").read_text())
    sd = load_file(str(CASE / "gpt.safetensors"))
    del sd["cls_embedding.uncond_embedding"]
    with pytest.raises(ArnodesError, match="cls_embedding.uncond_embedding"):
        build_module("llamagen", LlamaGenConfig.from_official(config["gpt_model_args"]), sd, "t2i.pt")


def test_config_types():
    cfg = LlamaGenConfig(dim=64, n_layer=1, n_head=2, model_type="t2i", cls_token_num=120, caption_dim=32,
                         block_size=16)
    assert cfg.is_t2i and not LlamaGenConfig().is_t2i
    with pytest.raises(ArnodesError, match="i2i"):
        LlamaGenConfig(model_type="i2i")
    with pytest.raises(ArnodesError, match="cls_token_num"):
        LlamaGenConfig(model_type="c2i", cls_token_num=120)
    with pytest.raises(InvalidInputError, match="caption_dim"):
        LlamaGenConfig(model_type="t2i", cls_token_num=8, caption_dim=0)


# ---- a random tiny t2i model, other than the fixture's ---------------------------------------
def tiny_t2i(n_kv_head: int | None = 2, cls: int = 6, caption_dim: int = 12, grid: int = 3, seed: int = 0) -> LlamaGen:
    cfg = LlamaGenConfig(dim=64, n_layer=2, n_head=4, n_kv_head=n_kv_head, multiple_of=32, vocab_size=48,
                         block_size=grid * grid, model_type="t2i", cls_token_num=cls, caption_dim=caption_dim)
    model = LlamaGen(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "norm" in name:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=gen))
            elif "embedding" in name:
                t.copy_(torch.randn(t.shape, generator=gen))
            else:
                scale = 2.0 if name == "output.weight" else 1.0
                t.copy_(torch.randn(t.shape, generator=gen) * scale / t.shape[1] ** 0.5)
    return model.eval()


def captions(model: LlamaGen, lengths: list[int], seed: int = 1, left: bool = True):
    """Encoder-like features, non-zero at padded rows, through the official padding."""
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(lengths), c.cls_token_num, c.caption_dim, generator=gen)
    mask = (torch.arange(c.cls_token_num)[None] < torch.tensor(lengths)[:, None]).long()
    return caption_condition(emb, mask, left_padding=left)


def uncached_greedy(model: LlamaGen, cond: torch.Tensor, mask: torch.Tensor, cfg: float = 1.0,
                    cfg_interval: int = -1) -> torch.Tensor:
    """Reference: the teacher-forced forward over the whole prefix at every step (the training mask)."""
    B, L = cond.shape[0], model.config.block_size
    null = model.cls_embedding.null_caption().expand_as(cond)
    tokens = torch.zeros(B, L, dtype=torch.long)
    with torch.no_grad():
        for t in range(L):
            logits = model(cond, tokens[:, : t + 1], emb_mask=mask)[:, t]  # (B, V)
            if cfg > 1.0 and llamagen_guided_step(t, cfg_interval):
                logits = cfg_combine(logits, model(null, tokens[:, : t + 1], emb_mask=mask)[:, t], cfg)
            tokens[:, t] = logits.argmax(-1)
    return tokens


def run(model, cond, mask, cfg=1.0, cfg_interval=-1, params=GREEDY, seed=0, **kw) -> torch.Tensor:
    c = Conditioning(text=TextCondition(cond, mask), cfg=cfg, cfg_interval=cfg_interval)
    out = generate_tokens(model, c, None, params, torch.Generator().manual_seed(seed), **kw)
    return out.grids[0].reshape(cond.shape[0], -1)


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_cached_equals_uncached_with_padded_captions(n_kv_head, left):
    model = tiny_t2i(n_kv_head)
    cond, mask = captions(model, [2, 6, 4], left=left)
    assert torch.equal(run(model, cond, mask), uncached_greedy(model, cond, mask))
    assert torch.equal(run(model, cond, mask, cfg=3.0, cfg_interval=3),
                       uncached_greedy(model, cond, mask, cfg=3.0, cfg_interval=3))


def test_padded_caption_rows_do_not_leak_and_the_mask_matters():
    model = tiny_t2i()
    cond, mask = captions(model, [2, 3])  # left-padded: the real tokens are the last rows
    noisy = cond + torch.randn(cond.shape) * (mask == 0)[..., None]  # change only padded rows
    trace_a, trace_b = {}, {}
    a = run(model, cond, mask, cfg=2.0, trace=trace_a)
    b = run(model, noisy, mask, cfg=2.0, trace=trace_b)
    assert torch.equal(a, b)
    torch.testing.assert_close(torch.stack(trace_a["raw_logits"]), torch.stack(trace_b["raw_logits"]))
    trace_c: dict = {}
    run(model, noisy, torch.ones_like(mask), cfg=2.0, trace=trace_c)  # nothing hidden: the noise shows
    assert not torch.allclose(trace_c["raw_logits"][0], trace_b["raw_logits"][0])


def test_speculative_decoding_runs_under_the_caption_mask():
    """Greedy SJD accepts exactly the argmax, so it must reproduce plain decoding token for token; a
    window that ignored the caption mask would not."""
    model = tiny_t2i(grid=4)
    cond, mask = captions(model, [1, 5])
    plain = run(model, cond, mask, cfg=2.0)
    stats: dict = {}
    sjd = run(model, cond, mask, cfg=2.0, decode=DecodeOptions("sjd", window=4), stats=stats)
    assert torch.equal(sjd, plain) and 1 < stats["forwards"] <= model.config.block_size


def test_full_cache_attention_equals_prefix_attention():
    """The compiled step attends the whole static cache (kv_len None); with the key mask it equals eager."""
    model = tiny_t2i()
    cond, mask = captions(model, [2, 5])
    cls = model.config.cls_token_num
    model.setup_caches(2, cls + model.config.block_size)
    pos = torch.arange(cls + 2)
    with torch.no_grad():
        first = model.prefill(cond, pos[:cls], cls, emb_mask=mask)
        tok = first.argmax(-1, keepdim=True)
        eager = model.decode_step(tok, pos[cls:cls + 1], cls + 1)
        full = model.decode_step(tok, pos[cls:cls + 1], None)
    torch.testing.assert_close(eager, full)


def test_kv_cache_and_key_mask_are_static_across_calls():
    model = tiny_t2i()
    cond, mask = captions(model, [2, 5])
    run(model, cond, mask, cfg=2.0)
    ptr = model.key_mask.data_ptr(), model.layers[0].attention.kv_cache.k_cache.data_ptr()
    one, one_mask = captions(model, [3])
    assert torch.equal(run(model, one, one_mask, cfg=2.0), uncached_greedy(model, one, one_mask, cfg=2.0))
    assert (model.key_mask.data_ptr(), model.layers[0].attention.kv_cache.k_cache.data_ptr()) == ptr


# ---- conditioning ------------------------------------------------------------------------------
def test_text_condition_validation_and_repeat():
    emb, mask = torch.zeros(2, 6, 12), torch.ones(2, 6, dtype=torch.long)
    text = TextCondition(emb, mask, prompts=("a", "b"))
    cond = Conditioning(text=text, cfg=3.0)
    assert cond.batch == 2 and cond.class_ids == ()
    rep = cond.repeat(3)
    assert rep.batch == 6 and rep.text.prompts == ("a", "a", "a", "b", "b", "b")
    assert rep.text.embeddings.shape == (6, 6, 12) and rep.cfg == 3.0
    assert Conditioning((1, 2)).repeat(2).class_ids == (1, 1, 2, 2)  # class conditioning unchanged
    same = Conditioning(text=text, cfg=3.0)
    other = Conditioning(text=TextCondition(emb, mask, prompts=("a", "b")), cfg=3.0)
    assert cond == same and hash(cond) == hash(same) and cond != other  # a text condition is equal only to itself
    for bad, match in [(dict(), "class id"), (dict(class_ids=(1,), text=text), "not both"),
                       (dict(text=text, style_ids=(0, 0)), "styles")]:
        with pytest.raises(InvalidInputError, match=match):
            Conditioning(**bad)
    with pytest.raises(InvalidInputError, match=r"\(B, T, C\)"):
        TextCondition(torch.zeros(2, 6), mask)
    with pytest.raises(InvalidInputError, match="negative"):
        TextCondition(emb, mask, negative=emb)
    with pytest.raises(InvalidInputError, match="3 prompt texts"):
        TextCondition(emb, mask, prompts=("a", "b", "c"))


def test_negative_prompt_replaces_the_null_caption():
    model = tiny_t2i()
    cond, mask = captions(model, [2, 5])
    neg, neg_mask = captions(model, [4, 1], seed=9)
    trace: dict = {}
    c = Conditioning(text=TextCondition(cond, mask, neg, neg_mask), cfg=2.0)
    generate_tokens(model, c, None, GREEDY, None, trace=trace)
    with torch.no_grad():
        model.setup_caches(2, 64)
        uncond = model.prefill(neg, torch.arange(model.config.cls_token_num), emb_mask=neg_mask)
    torch.testing.assert_close(trace["raw_logits"][0][2:], uncond)


def test_wrong_condition_kind_is_refused():
    t2i = tiny_t2i()
    cond, mask = captions(t2i, [2])
    with pytest.raises(InvalidInputError, match="text-to-image"):
        generate_tokens(t2i, Conditioning((1,)), None, GREEDY, None)
    with pytest.raises(InvalidInputError, match=r"\(B, 6, 12\)"):
        run(t2i, cond[:, :4], mask[:, :4])
    c2i = LlamaGen(LlamaGenConfig(dim=64, n_layer=1, n_head=4, num_classes=5, vocab_size=16, block_size=4)).eval()
    text = Conditioning(text=TextCondition(cond, mask))
    with pytest.raises(InvalidInputError, match="class-conditional"):
        generate_tokens(c2i, text, None, GREEDY, None)
    with pytest.raises(InvalidInputError, match="class-conditional"):
        class_labels(None, text, torch.device("cpu"))  # VAR
    with pytest.raises(InvalidInputError, match="emb_mask"):
        c2i(torch.tensor([1]), torch.zeros(1, 4, dtype=torch.long), emb_mask=torch.ones(1, 1))


def test_caption_padding_helper():
    emb = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1) + 1
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    cond, m = caption_condition(emb, mask)
    assert cond[..., 0].tolist() == [[0, 0, 1, 2], [5, 6, 7, 8]] and m.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    cond, m = caption_condition(emb, mask, left_padding=False)
    assert cond[..., 0].tolist() == [[1, 2, 0, 0], [5, 6, 7, 8]] and torch.equal(m, mask)
    with pytest.raises(InvalidInputError, match="right-padded"):
        caption_condition(emb, torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]]))


# ---- the T5 text encoder ---------------------------------------------------------------------
def word_tokenizer(words: int = 61):
    """A T5-shaped tokenizer for tests (pad 0, eos 1, unk 2, words w0..): real T5 needs a download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_encoder(tokenizer=None) -> T5TextEncoder:
    config = json.loads((CASE / "config.json").read_text())
    return T5TextEncoder.from_config(config["t5"]["config"], load_file(str(CASE / "t5_tiny.safetensors")), tokenizer)


def test_tokenize_pads_to_the_caption_length_and_warns_on_truncation(caplog):
    enc = tiny_encoder(word_tokenizer())
    long = " ".join(f"w{i % 61}" for i in range(150))
    with caplog.at_level(logging.WARNING, logger="arnodes.engine.text.t5"):
        ids, mask = enc.tokenize(["W1 w2  w3 ", long])
    assert ids.shape == mask.shape == (2, 120)
    assert ids[0, :4].tolist() == [4, 5, 6, 1] and not ids[0, 4:].any()  # lower-cased, eos, right-padded
    assert mask[0].tolist() == [1] * 4 + [0] * 116 and bool(mask[1].all()) and ids[1, -1] == 1
    assert ids[1, :119].tolist() == [3 + i % 61 for i in range(119)]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "prompt 1 is 151 tokens" in warned[0] and "120" in warned[0]
    caplog.clear()
    enc.tokenize(["w1 " * 119])  # exactly 120 with the end token: fits
    assert not caplog.records


def test_encoder_loads_from_a_models_folder_and_matches_the_reference(tmp_path):
    enc = tiny_encoder(word_tokenizer())
    folder = tmp_path / "flan-t5-xl"
    enc.model.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    loaded = load_text_encoder("flan-t5-xl", models_dir=tmp_path, offline=True)
    c = load_file(str(CASE / "cases.safetensors"))
    hidden = loaded.encode_ids(c["t5_input_ids"], c["t5_input_attention_mask"])
    torch.testing.assert_close(hidden, c["t5_encoder_last_hidden_state"], atol=1e-4, rtol=0)
    feats, mask = loaded.encode(["w3 w4", "w5"])
    assert feats.shape == (2, 120, 32) and mask.sum(1).tolist() == [3, 2]
    # a released encoder cleans prompts as the official sampler does: the tags and the handle go
    assert loaded.tokenize(["<b>W3</b> w4 @someone"])[0].tolist() == loaded.tokenize(["w3 w4"])[0].tolist()
    assert loaded.preprocess("A cat,a dog (8k)") == "a cat, a dog 8k"


def test_prompt_cleaning_matches_the_official_outputs():
    """clean_prompt against the official text_preprocessing (clean_caption twice), recorded with ftfy and
    BeautifulSoup by tools/clean_caption_fixture.py, and the three examples of the shared fixture."""
    import json

    from arnodes.engine.text.caption_cleaning import clean_prompt

    recorded = json.loads((CASE.parent / "clean_caption.json").read_text(encoding="utf-8"))["cases"]
    shared = json.loads((CASE / "config.json").read_text(encoding="utf-8"))["t5_text_preprocessing"]
    assert len(recorded) >= 50
    changed = [c for c in recorded if c["preprocessed"] != c["raw"].lower().strip()]
    assert len(changed) >= 35  # most cases exercise a rule: lower-casing alone would fail them
    for case in recorded + shared:
        assert clean_prompt(case["raw"]) == case["preprocessed"], case["raw"]


def test_missing_encoder_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache; offline, so no network
    with pytest.raises(MissingFileError) as e:
        load_text_encoder("flan-t5-xl", models_dir=tmp_path, offline=True)
    msg = str(e.value)
    assert "config.json" in msg and str(tmp_path / "flan-t5-xl") in msg and "google/flan-t5-xl" in msg
    folder = tmp_path / "flan-t5-xl"
    tiny_encoder().model.config.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    with pytest.raises(MissingFileError, match="model.safetensors"):
        load_text_encoder("flan-t5-xl", models_dir=tmp_path, offline=True)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MissingFileError, match="model-00001-of-00002.safetensors"):
        load_text_encoder("flan-t5-xl", models_dir=tmp_path, offline=True)
    with pytest.raises(InvalidInputError, match="flan-t5-xl"):
        load_text_encoder("t5-unknown", models_dir=tmp_path, offline=True)


def test_prompts_to_tokens_end_to_end():
    """Prompts -> T5 -> left padding -> the fixture's t2i GPT (caption_dim 32 = the tiny T5's width)."""
    config = json.loads((CASE / "config.json").read_text())
    gpt = build_module("llamagen", LlamaGenConfig.from_official(config["gpt_model_args"]),
                       load_file(str(CASE / "gpt.safetensors")), "gpt")
    enc = tiny_encoder(word_tokenizer())
    text = encode_prompts(enc, ["w1 w2 w3", "w9 " * 30], negative_prompts=["w4", "w5"])
    assert text.prompts == ("w1 w2 w3", "w9 " * 30) and text.mask[:, -1].all() and not text.mask[0, 0]
    out = generate_tokens(gpt, Conditioning(text=text, cfg=4.0), None, GREEDY, None)
    ids, mask = enc.tokenize(["w1 w2 w3", "w9 " * 30])
    cond, emb_mask = caption_condition(enc.encode_ids(ids, mask), mask)
    neg_ids, neg_mask = enc.tokenize(["w4", "w5"])
    neg, neg_emb_mask = caption_condition(enc.encode_ids(neg_ids, neg_mask), neg_mask)
    manual = generate_tokens(gpt, Conditioning(text=TextCondition(cond, emb_mask, neg, neg_emb_mask), cfg=4.0), None,
                             GREEDY, None)
    assert torch.equal(out.grids[0], manual.grids[0])
    plain = generate_tokens(gpt, Conditioning(text=TextCondition(cond, emb_mask), cfg=4.0), None, GREEDY, None)
    assert not torch.equal(out.grids[0], plain.grids[0])  # the negative prompt is used
