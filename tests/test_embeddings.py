"""Textual-inversion files: every format is read, the vectors land exactly where the name was in the
prompt (checked against a text encoder whose vocabulary is extended with the vectors, the way the
original TI paper adds a word), and embeddings of the wrong width are skipped and listed."""
import copy
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modules.checkpoints import load_checkpoint
from modules.devices import DevicePlan
from modules.embeddings import embedding_family, read_embedding
from modules.networks import NetworkRegistry
from modules.paths import ModelPaths
from modules.prompts import parse_attention
from modules.tokenizer import BOS_ID, EOS_ID
from modules.weights_io import WeightFileError
from tests.tiny_models import TEXT_WIDTH, write_tiny_checkpoint

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
_GEN = torch.Generator().manual_seed(7)


def rand(*shape):
    return torch.randn(shape, generator=_GEN)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


def write_embeddings(folder):
    """One file per format; returns {name: expected vectors}."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = {
        "pt-style": rand(3, TEXT_WIDTH),
        "concept": rand(TEXT_WIDTH),
        "kohya-emb": rand(2, TEXT_WIDTH),
        "xl-emb": {"clip_l": rand(2, TEXT_WIDTH), "clip_g": rand(2, TEXT_WIDTH)},
        "too-wide": rand(1, 768),
    }
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": nn.Parameter(vectors["pt-style"])},
                "name": "ignored", "step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "model"},
               folder / "pt-style.pt")
    torch.save({"<concept>": vectors["concept"]}, folder / "concept.bin")
    save_file({"emb_params": vectors["kohya-emb"]}, str(folder / "kohya-emb.safetensors"))
    save_file(vectors["xl-emb"], str(folder / "xl-emb.safetensors"))
    save_file({"emb_params": vectors["too-wide"]}, str(folder / "too-wide.safetensors"))
    return vectors


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return load_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("c") / "sd1.safetensors", "sd1"), PLAN)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return load_checkpoint(write_tiny_checkpoint(tmp_path_factory.mktemp("c") / "xl.safetensors", "sdxl"), PLAN)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    registry = NetworkRegistry(ModelPaths.create(root), None)
    registry.expected = write_embeddings(root / "models" / "embeddings")
    return registry


def test_every_format_is_read(tmp_path):
    expected = write_embeddings(tmp_path)
    for name, vectors in expected.items():
        path = next(tmp_path.glob(name + ".*"))
        ti = read_embedding(path)
        assert ti.name == name  # the trigger word is the file stem, as in A1111
        if isinstance(vectors, dict):
            assert set(ti.vectors) == {"clip_l", "clip_g"}
            assert all(torch.equal(ti.vectors[k], vectors[k]) for k in vectors)
        else:
            assert torch.equal(ti.vectors, vectors.reshape(-1, vectors.shape[-1]))
    assert embedding_family(read_embedding(tmp_path / "too-wide.safetensors")) == "sd1"
    assert embedding_family(read_embedding(tmp_path / "xl-emb.safetensors")) == "sdxl"


def test_unsafe_or_unknown_files_are_refused(tmp_path):
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "x": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(WeightFileError, match="evil.pt: refused: this pickle would run code"):
        read_embedding(tmp_path / "evil.pt")
    save_file({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(WeightFileError, match="two.safetensors: not a textual-inversion embedding"):
        read_embedding(tmp_path / "two.safetensors")


def test_listing_gives_a1111s_embedding_fields(tmp_path):
    """/sdapi/v1/embeddings on the real registry: vectors, shape (SDXL: clip_l + clip_g widths, as
    A1111 sums them) and the .pt file's own step / sd_checkpoint / sd_checkpoint_name."""
    from webui.api.routes_networks import embedding_item

    folder = tmp_path / "models" / "embeddings"
    write_embeddings(folder)
    save_file({"clip_l": rand(2, 768), "clip_g": rand(2, 1280)}, str(folder / "real-xl.safetensors"))
    registry = NetworkRegistry(ModelPaths.create(tmp_path), None)
    items = {e.name: embedding_item(e).model_dump() for e in registry.list_embeddings()}
    assert items["pt-style"] == {"step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "model", "shape": TEXT_WIDTH,
                                 "vectors": 3}
    assert items["concept"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": TEXT_WIDTH,
                                "vectors": 1}
    assert items["kohya-emb"]["vectors"] == 2 and items["too-wide"]["shape"] == 768
    assert items["real-xl"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 2048,
                                "vectors": 2}


def _reference_sd1(bundle, prefix: str, vectors: torch.Tensor, suffix: str) -> torch.Tensor:
    """CLIP with its vocabulary extended by one new token per vector, the prompt written with those
    token ids: an encoding that never goes through Palette's embedding code."""
    unit = bundle.text.units[0]
    model = copy.deepcopy(unit.model)
    old = model.token_embedding.weight.detach()
    grown = nn.Embedding(old.shape[0] + len(vectors), old.shape[1])
    grown.weight.data = torch.cat([old, vectors.to(old)])
    model.text_model.embeddings.token_embedding = grown
    tok = bundle.text.tokenizer
    new_ids = list(range(old.shape[0], old.shape[0] + len(vectors)))
    ids = [BOS_ID, *tok.encode(prefix), *new_ids, *tok.encode(suffix)]
    ids += [EOS_ID] * (77 - len(ids))
    with torch.no_grad():
        return model(torch.tensor([ids])).last_hidden_state


def test_sd1_vectors_replace_the_name_tokens(sd1, registry):
    lookup, skipped, paths = registry.embedding_lookup(sd1.text)
    assert skipped == ["too-wide", "xl-emb"]  # 768 wide / two encoders: not for this 64-wide SD1 model
    assert set(paths) == set(registry.expected)
    for name, prefix, suffix in (("pt-style", "a photo of ", " on a hill"), ("kohya-emb", "", ", red"),
                                 ("concept", "drawn like ", "")):
        got = sd1.text.encode(parse_attention(f"{prefix}{name}{suffix}"), embeddings=lookup).cross_attn
        vectors = registry.expected[name].reshape(-1, TEXT_WIDTH)
        assert torch.allclose(got, _reference_sd1(sd1, prefix, vectors, suffix), atol=1e-5)
        plain = sd1.text.encode(parse_attention(f"{prefix}{name}{suffix}")).cross_attn
        start = 1 + len(sd1.text.tokenizer.encode(prefix))
        # causal text encoder: before the name nothing changes, from the name on everything may
        assert torch.equal(got[:, :start], plain[:, :start]) and not torch.allclose(got[:, start], plain[:, start])
    assert set(lookup.used) == {"pt-style", "kohya-emb", "concept"}


def test_sdxl_file_feeds_each_encoder_its_own_vectors(sdxl, registry):
    lookup, skipped, _ = registry.embedding_lookup(sdxl.text)
    assert skipped == ["concept", "kohya-emb", "pt-style", "too-wide"]  # single-encoder files
    start = 1 + len(sdxl.text.tokenizer.encode("one"))
    xl = registry.expected["xl-emb"]
    for unit in sdxl.text.units:
        captured = []  # what each encoder's transformer layers receive: token rows + positions
        handle = unit.model.text_model.embeddings.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
        try:
            sdxl.text.encode(parse_attention("one xl-emb two"), embeddings=lookup)
        finally:
            handle.remove()
        rows = captured[0][0] - unit.model.text_model.embeddings.position_embedding.weight[:77]
        assert torch.allclose(rows[start:start + 2], xl[unit.role], atol=1e-6), unit.role
        table = unit.model.token_embedding.weight
        two = sdxl.text.tokenizer.encode("two")[0]
        assert torch.allclose(rows[start + 2], table[two], atol=1e-6)  # the next word is itself again
        assert torch.allclose(rows[start - 1], table[sdxl.text.tokenizer.encode("one")[-1]], atol=1e-6)
    assert set(lookup.used) == {"xl-emb"}
