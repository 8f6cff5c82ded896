"""Prompt → Conditioning against A1111's rules, with tiny random encoders loaded through the same
state-dict path as real checkpoints. References are computed here by other means (direct model calls on
hand-built ids, truncated models for CLIP skip, formulas written out)."""
from __future__ import annotations

import copy
import math
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modules.nn.clip import TextEncoderConfig, build_text_encoder  # noqa: E402
from modules.text_encoding import (  # noqa: E402
    AdmParams,
    EmbeddingTable,
    TextEncoderStack,
    TextualInversion,
    apply_emphasis,
    build_chunks,
    fourier_features,
    make_sdxl_adm,
    pad_after_first_eos,
)
from modules.tokenizer import default_tokenizer  # noqa: E402

BOS, EOS, COMMA, CAT, DOG, A = 49406, 49407, 267, 2368, 1929, 320
TINY_L = TextEncoderConfig(hidden_size=64, num_layers=3, num_heads=1, intermediate_size=128)
TINY_G = TextEncoderConfig(hidden_size=128, num_layers=3, num_heads=2, intermediate_size=256,
                           hidden_act="gelu", projection_dim=96)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU spinning threads cost 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PLAN = SimpleNamespace(text_dtype=torch.float32, device=torch.device("cpu"))


def slot(prefix, layout, role, pad_with_eos):
    return SimpleNamespace(prefix=prefix, layout=layout, role=role, pad_with_eos=pad_with_eos)


SD1 = SimpleNamespace(text_encoders=(slot("cond_stage_model.transformer.", "hf", "clip_l", True),),
                      sdxl_text=False, adm=None)
SD2 = SimpleNamespace(text_encoders=(slot("cond_stage_model.model.", "open_clip", "clip_h", False),),
                      sdxl_text=False, adm=None)
SDXL = SimpleNamespace(text_encoders=(slot("conditioner.embedders.0.transformer.", "hf", "clip_l", True),
                                      slot("conditioner.embedders.1.model.", "open_clip", "clip_g", False)),
                       sdxl_text=True, adm="sdxl")
REFINER = SimpleNamespace(text_encoders=(slot("conditioner.embedders.0.model.", "open_clip", "clip_g", False),),
                          sdxl_text=True, adm="refiner")


def to_open_clip(model) -> dict:
    """Write a transformers-layout model out the way open_clip stores it (fused q/k/v, [width, proj])."""
    sd = model.state_dict()
    t = "text_model."
    out = {
        "token_embedding.weight": sd[t + "embeddings.token_embedding.weight"],
        "positional_embedding": sd[t + "embeddings.position_embedding.weight"],
        "ln_final.weight": sd[t + "final_layer_norm.weight"],
        "ln_final.bias": sd[t + "final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(model.config.num_layers):
        a, b = f"{t}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}attn.in_proj_{kind}"] = torch.cat([sd[f"{a}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[f"{b}attn.out_proj.{kind}"] = sd[f"{a}self_attn.out_proj.{kind}"]
            out[f"{b}ln_1.{kind}"] = sd[f"{a}layer_norm1.{kind}"]
            out[f"{b}ln_2.{kind}"] = sd[f"{a}layer_norm2.{kind}"]
            out[f"{b}mlp.c_fc.{kind}"] = sd[f"{a}mlp.fc1.{kind}"]
            out[f"{b}mlp.c_proj.{kind}"] = sd[f"{a}mlp.fc2.{kind}"]
    return out


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(1)
    clip_l = build_text_encoder(TINY_L)
    clip_g = build_text_encoder(TINY_G)
    for model in (clip_l, clip_g):  # fresh layer norms (gain 1, bias 0) would give outputs of mean 0
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.data = 1 + 0.1 * torch.randn_like(module.weight)
                module.bias.data = 0.1 * torch.randn_like(module.bias)
    return clip_l, clip_g


def checkpoint(family, clip_l, clip_g) -> dict:
    sd = {}
    for s in family.text_encoders:
        if s.layout == "hf":
            sd.update({s.prefix + k: v for k, v in clip_l.state_dict().items()})
        else:
            sd.update({s.prefix + k: v for k, v in to_open_clip(clip_g).items()})
    return sd


@pytest.fixture(scope="module")
def stacks(tiny_models):
    out = {}
    for name, family in {"sd1": SD1, "sd2": SD2, "sdxl": SDXL, "refiner": REFINER}.items():
        sd = checkpoint(family, *tiny_models)
        stack, used, missing = TextEncoderStack.from_state_dict(sd, family, PLAN)
        assert missing == [] and set(sd) - used <= {k for k in sd if k.endswith("logit_scale")}
        out[name] = stack
    return out


def ids(*tokens, pad=EOS):
    row = [BOS, *tokens, EOS]
    return row + [pad] * (77 - len(row))


# ---- chunking -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def test_short_prompt_is_one_77_token_chunk(tok):
    chunks, count = build_chunks([("a photo of a cat", 1.0)], tok)
    assert len(chunks) == 1 and count == 5
    assert chunks[0].tokens == ids(320, 1125, 539, 320, 2368)
    assert chunks[0].multipliers == [1.0] * 77


def test_empty_prompt(tok, stacks):
    chunks, count = build_chunks([("", 1.0)], tok)
    assert [c.tokens for c in chunks] == [ids()] and count == 0
    assert stacks["sd1"].token_count([("", 1.0)]) == (0, 75)


def test_long_prompt_makes_more_chunks(tok, stacks):
    parsed = [("cat " * 100, 1.0)]
    chunks, count = build_chunks(parsed, tok)
    assert [len(c.tokens) for c in chunks] == [77, 77] and count == 100
    assert chunks[0].tokens == [BOS] + [CAT] * 75 + [EOS]
    assert chunks[1].tokens == ids(*[CAT] * 25)
    assert stacks["sd1"].token_count(parsed) == (100, 150)
    assert stacks["sd1"].encode(parsed).cross_attn.shape == (1, 154, 64)


def test_weights_follow_their_pieces(tok):
    chunks, _ = build_chunks([("a cat,", 1.0), ("red dog", 1.3), ("cat", 0.5)], tok)
    red = tok.encode("red")[0]
    assert chunks[0].tokens[:8] == [BOS, A, CAT, COMMA, red, DOG, CAT, EOS]
    assert chunks[0].multipliers[:8] == [1.0, 1.0, 1.0, 1.0, 1.3, 1.3, 0.5, 1.0]


def test_comma_wrap_moves_the_tail_into_the_next_chunk(tok):
    parsed = [("cat " * 70 + ", " + "dog " * 10, 1.0)]
    chunks, count = build_chunks(parsed, tok)
    assert chunks[0].tokens == [BOS] + [CAT] * 70 + [COMMA] + [EOS] * 4 + [EOS]
    assert chunks[1].tokens == ids(*[DOG] * 10)
    assert count == 85
    # backtrack 0 disables the wrap; a comma further back than the backtrack does not wrap either
    for backtrack in (0, 4):
        chunks, _ = build_chunks(parsed, tok, comma_padding_backtrack=backtrack)
        assert chunks[0].tokens == [BOS] + [CAT] * 70 + [COMMA] + [DOG] * 4 + [EOS]
        assert chunks[1].tokens == ids(*[DOG] * 6)


def test_break_closes_the_chunk(tok):
    chunks, count = build_chunks([("cat", 1.0), ("BREAK", -1), ("dog", 1.2)], tok)
    assert [c.tokens for c in chunks] == [ids(CAT), ids(DOG)]
    assert chunks[1].multipliers[1] == 1.2 and count == 76
    chunks, _ = build_chunks([("BREAK", -1), ("dog", 1.0)], tok)  # A1111 keeps the empty first chunk
    assert [c.tokens for c in chunks] == [ids(), ids(DOG)]


def test_open_clip_padding_is_zero_after_first_eos():
    assert pad_after_first_eos(ids(CAT, DOG), 0) == ids(CAT, DOG, pad=0)
    assert pad_after_first_eos([BOS] + [CAT] * 75 + [EOS], 0) == [BOS] + [CAT] * 75 + [EOS]


# ---- textual inversion --------------------------------------------------------------------------------

def test_embedding_occupies_its_vector_count(tok):
    emb = TextualInversion("fancystyle", torch.zeros(3, 64))
    table = EmbeddingTable(tok, [emb])
    chunks, count = build_chunks([("a fancystyle cat", 1.1)], tok, embeddings=table)
    assert chunks[0].tokens[:7] == [BOS, A, 0, 0, 0, CAT, EOS] and count == 5
    assert chunks[0].fixes == [(1, emb)]
    assert chunks[0].multipliers[:6] == [1.0] + [1.1] * 5
    # an embedding that does not fit in the chunk starts the next one
    chunks, _ = build_chunks([("cat " * 74 + "fancystyle", 1.0)], tok, embeddings=table)
    assert chunks[0].tokens == [BOS] + [CAT] * 74 + [EOS, EOS] and chunks[1].fixes == [(0, emb)]


def test_comma_wrap_leaves_embedding_fixes_in_the_closed_chunk_like_a1111(tok):
    # A1111 quirk kept for reproducibility: when the tail after a comma moves on, its embedding's
    # placeholders move with it but the fix (the vectors) stays at the old offset of the closed chunk.
    emb = TextualInversion("fancystyle", torch.zeros(3, 64))
    parsed = [("cat " * 60 + ", fancystyle" + " dog" * 20, 1.0)]
    chunks, _ = build_chunks(parsed, tok, embeddings=EmbeddingTable(tok, [emb]))
    assert chunks[0].tokens == [BOS] + [CAT] * 60 + [COMMA] + [EOS] * 15
    assert chunks[0].fixes == [(61, emb)]
    assert chunks[1].tokens[:5] == [BOS, 0, 0, 0, DOG] and chunks[1].fixes == []


def test_longest_embedding_name_wins(tok):
    short, long = TextualInversion("fancy", torch.zeros(1, 64)), TextualInversion("fancy style", torch.zeros(2, 64))
    table = EmbeddingTable(tok, [short, long])
    assert table.find(tok.encode("fancy style cat"), 0)[0] is long
    assert table.find(tok.encode("fancy cat"), 0)[0] is short
    assert table.find(tok.encode("cat fancy"), 0) is None


def test_embedding_vectors_reach_the_encoder(tiny_models, stacks):
    clip_l, _ = tiny_models
    vectors = torch.randn(3, 64)
    table = EmbeddingTable(embeddings=[TextualInversion("fancystyle", vectors)])
    got = stacks["sd1"].encode([("a fancystyle cat", 1.0)], embeddings=table, emphasis="Ignore").cross_attn
    # Reference: a copy of the model whose rows 1000..1002 are the vectors, addressed by id.
    patched = copy.deepcopy(clip_l)
    patched.token_embedding.weight.data[1000:1003] = vectors
    want = patched(torch.tensor([ids(A, 1000, 1001, 1002, CAT)])).last_hidden_state
    torch.testing.assert_close(got, want)


def test_sdxl_embedding_uses_vectors_per_encoder(stacks):
    emb = TextualInversion("fancystyle", {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)})
    cond = stacks["sdxl"].encode([("fancystyle", 1.0)], embeddings=EmbeddingTable(embeddings=[emb]))
    assert cond.cross_attn.shape == (1, 77, 192) and cond.extras["embeddings"] == ("fancystyle",)
    wrong = TextualInversion("fancystyle", torch.randn(2, 768))
    with pytest.raises(ValueError, match="768-wide"):
        stacks["sd1"].encode([("fancystyle", 1.0)], embeddings=EmbeddingTable(embeddings=[wrong]))


# ---- emphasis and layers ------------------------------------------------------------------------------

PARSED = [("a cat", 1.0), ("red fox", 1.3), ("dog", 0.8)]


def raw_sd1(clip_l, tok):
    red, fox = tok.encode("red fox")
    weights = torch.tensor([1.0, 1.0, 1.0, 1.3, 1.3, 0.8] + [1.0] * 71)
    return clip_l(torch.tensor([ids(A, CAT, red, fox, DOG)])).last_hidden_state, weights


def test_emphasis_modes_against_hand_computation(tiny_models, stacks, tok):
    z, w = raw_sd1(tiny_models[0], tok)
    scaled = z * w[None, :, None]
    expected = {
        "Original": scaled * (z.mean() / scaled.mean()),
        "No norm": scaled,
        "Ignore": z,
        "None": z,
    }
    for mode, want in expected.items():
        got = stacks["sd1"].encode(PARSED, emphasis=mode).cross_attn
        torch.testing.assert_close(got, want, msg=mode)
    torch.testing.assert_close(apply_emphasis(z, w[None], "Original").mean(), z.mean())
    with pytest.raises(ValueError, match="emphasis"):
        stacks["sd1"].encode(PARSED, emphasis="Loud")


def test_emphasis_normalises_each_chunk_on_its_own(tiny_models, stacks):
    parsed = [("cat " * 75, 1.0), ("dog", 1.5)]
    got = stacks["sd1"].encode(parsed).cross_attn
    second = tiny_models[0](torch.tensor([ids(DOG)])).last_hidden_state
    w = torch.tensor([1.0, 1.5] + [1.0] * 75)[None, :, None]
    torch.testing.assert_close(got[:, 77:], second * w * (second.mean() / (second * w).mean()))


def truncated(model, keep: int):
    """The same weights with only the first `keep` layers: its outputs are the full model's inner ones."""
    sd = {k: v for k, v in model.state_dict().items() if not any(f"layers.{i}." in k for i in range(keep, 99))}
    config = TextEncoderConfig(**{**model.config.__dict__, "num_layers": keep})
    short = build_text_encoder(config)
    short.load_state_dict(sd)
    return short


def test_clip_skip_sd1(tiny_models, stacks):
    clip_l = tiny_models[0]
    x = torch.tensor([ids(A, CAT)])
    stack = stacks["sd1"]
    torch.testing.assert_close(stack.encode([("a cat", 1.0)], clip_skip=1).cross_attn, clip_l(x).last_hidden_state)
    for skip in (2, 3):  # skip n = the last layer of a model n-1 layers shorter, with final norm
        want = truncated(clip_l, TINY_L.num_layers - skip + 1)(x).last_hidden_state
        torch.testing.assert_close(stack.encode([("a cat", 1.0)], clip_skip=skip).cross_attn, want)
    with pytest.raises(ValueError, match="CLIP skip 9"):
        stack.encode([("a cat", 1.0)], clip_skip=9)


def test_sd2_reads_penultimate_layer_with_norm_and_ignores_clip_skip(tiny_models, stacks):
    clip_g = tiny_models[1]
    x = torch.tensor([ids(A, CAT, pad=0)])
    want = truncated(clip_g, TINY_G.num_layers - 1)(x).last_hidden_state
    for skip in (1, 2):
        torch.testing.assert_close(stacks["sd2"].encode([("a cat", 1.0)], clip_skip=skip).cross_attn, want)
    assert stacks["sd2"].encode([("a cat", 1.0)]).pooled is None


def test_sdxl_concatenates_penultimate_layers_without_norm(tiny_models, stacks):
    clip_l, clip_g = tiny_models
    cond = stacks["sdxl"].encode([("a cat", 1.0)], clip_skip=2)  # CLIP skip does not apply to SDXL
    want_l = truncated(clip_l, TINY_L.num_layers - 1)(torch.tensor([ids(A, CAT)])).hidden_states[-1]
    want_g = truncated(clip_g, TINY_G.num_layers - 1)(torch.tensor([ids(A, CAT, pad=0)])).hidden_states[-1]
    torch.testing.assert_close(cond.cross_attn, torch.cat([want_l, want_g], dim=-1))
    pooled = clip_g(torch.tensor([ids(A, CAT, pad=0)])).text_embeds
    torch.testing.assert_close(cond.pooled, pooled)
    # A1111's "sdxl_clip_l_skip" option: CLIP-L reads hidden_states[-n] (still without norm)
    cond = stacks["sdxl"].encode([("a cat", 1.0)], clip_skip=1, sdxl_clip_l_skip=True)
    torch.testing.assert_close(cond.cross_attn[..., :64], clip_l(torch.tensor([ids(A, CAT)])).hidden_states[-1])


def test_sdxl_pooled_comes_from_the_first_chunk(tiny_models, stacks):
    cond = stacks["sdxl"].encode([("cat", 1.0), ("BREAK", -1), ("dog", 1.0)])
    assert cond.cross_attn.shape == (1, 154, 192)
    torch.testing.assert_close(cond.pooled, tiny_models[1](torch.tensor([ids(CAT, pad=0)])).text_embeds)


# ---- SDXL ADM -----------------------------------------------------------------------------------------

def features(value: float) -> torch.Tensor:
    """SGM's 256-d timestep embedding, in float64 (float32 arguments near 1000 rad carry ~1e-4 error)."""
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 128) for i in range(128)], dtype=torch.float64)
    return torch.cat([torch.cos(value * freqs), torch.sin(value * freqs)]).float()


def test_adm_layout_base(stacks):
    cond = stacks["sdxl"].encode([("a cat", 1.0)], adm=AdmParams(width=832, height=1216, crop_top=16, crop_left=8))
    assert cond.adm.shape == (1, 96 + 6 * 256)
    torch.testing.assert_close(cond.adm[0, :96], cond.pooled[0])
    blocks = cond.adm[0, 96:].reshape(6, 256)
    for block, value in zip(blocks, (1216, 832, 16, 8, 1216, 832)):  # (h, w), (top, left), target (h, w)
        torch.testing.assert_close(block, features(value), atol=2e-4, rtol=0)


def test_adm_layout_refiner(stacks):
    cond = stacks["refiner"].encode([("a cat", 1.0)], adm=AdmParams(width=1024, height=768, aesthetic_score=2.5))
    assert cond.cross_attn.shape == (1, 77, 128) and cond.adm.shape == (1, 96 + 5 * 256)
    blocks = cond.adm[0, 96:].reshape(5, 256)
    for block, value in zip(blocks, (768, 1024, 0, 0, 2.5)):
        torch.testing.assert_close(block, features(value), atol=2e-4, rtol=0)


def test_make_sdxl_adm_real_sizes():
    pooled = torch.randn(2, 1280)
    assert make_sdxl_adm(pooled, 1024, 1024).shape == (2, 2816)
    assert make_sdxl_adm(pooled, 1024, 1024, aesthetic=6.0).shape == (2, 2560)
    target = make_sdxl_adm(pooled, 1024, 1024, target=(512, 768))[0, 1280:].reshape(6, 256)
    torch.testing.assert_close(target[4], features(768), atol=2e-4, rtol=0)
    torch.testing.assert_close(target[5], features(512), atol=2e-4, rtol=0)
    torch.testing.assert_close(fourier_features(torch.tensor([0.0]))[0], torch.cat([torch.ones(128), torch.zeros(128)]))


def test_force_zero_keeps_size_features(stacks):
    cond = stacks["sdxl"].encode([("", 1.0)], force_zero=True)
    assert not cond.cross_attn.any() and not cond.pooled.any()
    assert not cond.adm[0, :96].any() and cond.adm[0, 96:].any()


def test_loads_lazily_from_a_safetensors_file(tmp_path, tiny_models, stacks):
    from safetensors.torch import save_file

    from modules.weights_io import open_weights

    sd = {k: v.contiguous() for k, v in checkpoint(SDXL, *tiny_models).items()}
    save_file(sd, str(tmp_path / "tiny-sdxl.safetensors"))
    lazy = open_weights(tmp_path / "tiny-sdxl.safetensors")
    stack, used, missing = TextEncoderStack.from_state_dict(lazy, SDXL, PLAN)
    assert missing == [] and set(lazy.keys()) - used == {"conditioner.embedders.1.model.logit_scale"}
    want = stacks["sdxl"].encode([("a (cat:1.2)", 1.0)])
    got = stack.encode([("a (cat:1.2)", 1.0)])
    torch.testing.assert_close(got.cross_attn, want.cross_attn)
    torch.testing.assert_close(got.adm, want.adm)


def test_missing_encoder_is_a_clear_error():
    from modules.weights_io import WeightFileError

    with pytest.raises(WeightFileError, match="no clip_g text encoder"):
        TextEncoderStack.from_state_dict({}, REFINER, PLAN)


def test_stack_properties(stacks):
    assert [u.pad_id for u in stacks["sdxl"].units] == [EOS, 0]
    assert [u.layer_policy for u in stacks["sdxl"].units] == ["penultimate", "penultimate"]
    assert stacks["sd1"].units[0].layer_policy == "clip_skip"
    assert stacks["sd2"].units[0].layer_policy == "penultimate_ln"
    assert stacks["sdxl"].context_dim == 192 and stacks["sd1"].encode([("cat", 1.0)]).adm is None
