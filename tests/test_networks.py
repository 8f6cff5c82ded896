"""LoRAs and embeddings through the Engine: generation with tags and trigger words, the infotext's
`Lora hashes` / `TI hashes` (A1111's hashes, computed here independently), named errors, listing
with family / metadata / preview, and the token counter."""
import hashlib
import struct

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules import infotext
from modules.devices import DevicePlan
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.types import GenerationRequest
from modules.validation import RequestError
from tests.tiny_models import TEXT_WIDTH, write_tiny_checkpoint

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
_GEN = torch.Generator().manual_seed(11)
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"
TE = "lora_te_text_model_encoder_layers_0_self_attn_v_proj"


def rand(*shape, std=0.5):
    return torch.randn(shape, generator=_GEN) * std


def lora(stem, out, inp, rank=4, alpha=4.0):
    return {f"{stem}.lora_down.weight": rand(rank, inp), f"{stem}.lora_up.weight": rand(out, rank),
            f"{stem}.alpha": torch.tensor(alpha)}


def addnet_hash(path) -> str:
    """sha256 of a safetensors file after the 8-byte length and the JSON header (A1111 / kohya)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette")
    models = root / "models"
    for family in ("sd1", "sdxl"):
        write_tiny_checkpoint(models / "Stable-diffusion" / f"tiny-{family}.safetensors", family)
    lora_dir = models / "Lora"
    lora_dir.mkdir(parents=True)
    save_file(lora(Q, 32, 32) | lora(TE, TEXT_WIDTH, TEXT_WIDTH), str(lora_dir / "detail.safetensors"),
              metadata={"ss_output_name": "detail_v1", "ss_network_dim": "4", "ss_tag_frequency": "x" * 10000,
                        "modelspec.title": "not ss", "ss_bad": "line\x00break"})
    Image.new("RGB", (8, 8)).save(lora_dir / "detail.preview.png")
    (lora_dir / "sub").mkdir()
    save_file(lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280, rank=2),
              str(lora_dir / "sub" / "xl-style.safetensors"))
    (models / "LyCORIS").mkdir()
    save_file({f"{Q}.hada_w1_a": rand(32, 2), f"{Q}.hada_w1_b": rand(2, 32), f"{Q}.hada_w2_a": rand(32, 2),
               f"{Q}.hada_w2_b": rand(2, 32)}, str(models / "LyCORIS" / "hada.safetensors"))
    emb = models / "embeddings"
    emb.mkdir()
    torch.save({"string_to_param": {"*": rand(3, TEXT_WIDTH, std=1.0)}}, emb / "shiny.pt")
    save_file({"emb_params": rand(1, 768)}, str(emb / "sd15-only.safetensors"))
    Image.new("RGB", (8, 8)).save(emb / "shiny.png")
    return root


@pytest.fixture()
def engine(root):
    return Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)


def _req(**kw):
    base = dict(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=5,
                sampler_name="Euler", cfg_scale=5.0, do_not_save=True, checkpoint="tiny-sd1.safetensors")
    return GenerationRequest(**{**base, **kw})


def test_generate_with_lora_and_embedding_writes_hashes_that_parse_back(engine, root):
    plain = engine.generate(_req())
    res = engine.generate(_req(prompt="a red circle <lora:detail:0.8>, shiny", negative_prompt="blue"))
    assert len(res.images) == 1 and res.images[0].size == (64, 64)
    assert res.images[0].tobytes() != plain.images[0].tobytes()  # the LoRA and the embedding did something
    lora_path = root / "models" / "Lora" / "detail.safetensors"
    emb_path = root / "models" / "embeddings" / "shiny.pt"
    text = res.infotexts[0]
    assert f'Lora hashes: "detail: {addnet_hash(lora_path)[:12]}"' in text
    ti_hash = hashlib.sha256(emb_path.read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "shiny: {ti_hash}"' in text
    params = infotext.parse(text)
    assert infotext.parse_hashes(params["Lora hashes"]) == {"detail": addnet_hash(lora_path)[:12]}
    assert infotext.parse_hashes(params["TI hashes"]) == {"shiny": ti_hash}
    assert params["Prompt"] == "a red circle <lora:detail:0.8>, shiny"
    assert res.info["lora_skipped_keys"] == {"detail": 0}
    assert res.info["skipped_embeddings"] == ["sd15-only"]
    assert res.info["used_embeddings"] == ["shiny"]
    # the cached model is clean again: the same plain request gives the same pixels
    assert engine.generate(_req()).images[0].tobytes() == plain.images[0].tobytes()


def test_strength_zero_is_the_plain_image_and_lycoris_folder_is_searched(engine):
    plain = engine.generate(_req())
    assert engine.generate(_req(prompt="a red circle <lora:detail:0>")).images[0].tobytes() == plain.images[0].tobytes()
    res = engine.generate(_req(prompt="a red circle <lyco:hada:1>"))
    assert res.images[0].tobytes() != plain.images[0].tobytes() and res.info["lora_skipped_keys"] == {"hada": 0}
    # other extra-network kinds are skipped and reported, as A1111 skips kinds it does not know
    res = engine.generate(_req(prompt="a red circle <hypernet:foo:1>"))
    assert res.images[0].tobytes() == plain.images[0].tobytes()
    assert res.info["ignored_network_tags"] == ["<hypernet:foo:1>"]


def test_hires_pass_uses_the_loras(engine):
    hr = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, hr_upscaler="Latent", hr_denoising_strength=0.5)
    with_lora = engine.generate(_req(prompt="a red circle <lora:detail:1>", **hr))
    without = engine.generate(_req(**hr))
    assert with_lora.images[0].size == (96, 96)
    # a hires prompt without the tag switches the LoRA off for the second pass (as A1111 does)
    hires_off = engine.generate(_req(prompt="a red circle <lora:detail:1>", hr_prompt="a red circle", **hr))
    assert len({with_lora.images[0].tobytes(), without.images[0].tobytes(), hires_off.images[0].tobytes()}) == 3


def test_unknown_lora_is_named_before_the_model_loads(tmp_path, root):
    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)
    with pytest.raises(RequestError) as err:
        engine.generate(_req(prompt="x <lora:detial:1>"))
    assert err.value.field == "prompt"
    assert str(err.value) == "prompt: unknown LoRA 'detial'; did you mean: detail?"
    assert engine.current_checkpoint is None  # refused before any model work
    empty = Engine(ModelPaths.create(tmp_path), plan=PLAN)
    with pytest.raises(RequestError, match="unknown LoRA 'x'; no LoRA files found in"):
        empty.generate(_req(prompt="<lora:x:1>"))
    with pytest.raises(RequestError, match="UNet weight 'abc' is not a number"):
        engine.generate(_req(prompt="<lora:detail:1:abc>"))


def test_unknown_lora_is_refused_at_queue_submit(root):
    from modules.queue import JobQueue

    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)
    queue = JobQueue(engine, max_size=4)
    try:
        with pytest.raises(RequestError, match="unknown LoRA 'detial'; did you mean: detail"):
            queue.submit(_req(prompt="x <lora:detial:1>"))
        with pytest.raises(RequestError, match="hr_upscaler"):
            queue.submit(_req(enable_hr=True, hr_upscaler="No such upscaler"))
        assert queue.list_jobs() == []  # nothing waits in line for a job that cannot run
    finally:
        queue.shutdown()


def test_lora_for_another_family_is_refused(engine):
    with pytest.raises(RequestError) as err:
        engine.generate(_req(prompt="x <lora:xl-style:1>"))
    assert str(err.value) == "prompt: LoRA 'xl-style' was made for SDXL, the model is SD1"
    # by folder path too
    with pytest.raises(RequestError, match="LoRA 'sub/xl-style' was made for SDXL"):
        engine.generate(_req(prompt="x <lora:sub/xl-style:1>"))


def test_listing_finds_files_family_metadata_and_previews(engine, root):
    loras = {e.name: e for e in engine.list_loras()}
    assert set(loras) == {"detail", "xl-style", "hada"}
    detail = loras["detail"]
    assert detail.kind == "lora" and detail.family is None  # 64-wide tiny model: shapes do not tell
    assert loras["xl-style"].family == "sdxl"
    assert detail.preview == root / "models" / "Lora" / "detail.preview.png"
    assert set(detail.metadata) == {"ss_output_name", "ss_network_dim", "ss_tag_frequency", "ss_bad"}
    assert len(detail.metadata["ss_tag_frequency"]) == 4096 and detail.metadata["ss_bad"] == "linebreak"
    assert loras["hada"].path.parent.name == "LyCORIS"
    embeddings = {e.name: e for e in engine.list_embeddings()}
    assert set(embeddings) == {"shiny", "sd15-only"}
    assert embeddings["sd15-only"].family == "sd1" and embeddings["shiny"].family is None
    assert embeddings["shiny"].preview == root / "models" / "embeddings" / "shiny.png"


def test_hashes_are_computed_lazily_and_cached(engine, root):
    assert {e.name: e.hash for e in engine.list_loras()}["detail"] is None
    engine.generate(_req(prompt="x <lora:detail:1>"))
    expected = addnet_hash(root / "models" / "Lora" / "detail.safetensors")[:12]
    assert {e.name: e.hash for e in engine.list_loras()}["detail"] == expected


def test_refresh_networks_sees_new_files(engine, root):
    assert "late" not in {e.name for e in engine.list_loras()}
    path = root / "models" / "Lora" / "late.safetensors"
    save_file(lora(Q, 32, 32), str(path))
    try:
        assert "late" not in {e.name for e in engine.list_loras()}
        engine.refresh_networks()
        assert "late" in {e.name for e in engine.list_loras()}
    finally:
        path.unlink()
        engine.refresh_networks()


def test_token_count_counts_embedding_vectors_and_drops_tags(engine):
    assert engine.token_count("a red circle") == (3, 75)
    assert engine.token_count("a red circle <lora:detail:1>") == (3, 75)
    assert engine.token_count("a red circle, shiny") == (4 + 3, 75)  # "shiny" is 3 vectors
    # AND parts and prompt-editing texts are counted one by one; the longest wins: "x" + 80 words
    assert engine.token_count("a [red:blue:5] circle AND x " + "word " * 80) == (81, 150)


class _WatchedPaths:
    """ModelPaths that counts folder scans and can hold the LoRA scan until `gate` is set."""

    def __init__(self, inner: ModelPaths) -> None:
        self.inner, self.scans, self.gate = inner, {"lora": 0, "embeddings": 0}, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def list_files(self, kind, extensions):
        self.scans[kind] += 1
        if kind == "lora" and self.gate is not None:
            self.gate.wait(20)
        return self.inner.list_files(kind, extensions)


def _small_root(tmp_path):
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    save_file(lora(Q, 32, 32), str(tmp_path / "models" / "Lora" / "detail.safetensors"))
    emb = tmp_path / "models" / "embeddings"
    emb.mkdir(parents=True)
    torch.save({"string_to_param": {"*": rand(2, TEXT_WIDTH)}}, emb / "shiny.pt")
    return _WatchedPaths(ModelPaths.create(tmp_path))


def test_a_slow_lora_scan_does_not_block_embeddings_or_opening_a_lora(tmp_path):
    import threading

    from modules.networks import NetworkRegistry

    paths = _small_root(tmp_path)
    registry = NetworkRegistry(paths, None)
    detail = registry.find_lora("detail")
    registry.refresh()
    paths.gate = threading.Event()
    scanning = threading.Thread(target=registry.list_loras)  # e.g. the UI's refresh button
    scanning.start()
    try:
        for _ in range(200):
            if paths.scans["lora"] == 2:
                break
            threading.Event().wait(0.01)
        box = {}
        other = threading.Thread(target=lambda: box.update(emb=registry.embeddings(), names=registry.list_embeddings(),
                                                           lora=registry.open(detail)))
        other.start()
        other.join(5)
        assert not other.is_alive(), "embeddings()/open() waited for the LoRA folder scan"
        assert set(box["emb"]) == {"shiny"} and box["lora"] is not None
    finally:
        paths.gate.set()
        scanning.join(20)
    assert [e.name for e in registry.list_loras()] == ["detail"]


def test_embeddings_are_not_rescanned_per_call_but_a_new_file_is_seen(tmp_path):
    from modules.networks import NetworkRegistry

    paths = _small_root(tmp_path)
    registry = NetworkRegistry(paths, None)
    assert set(registry.embeddings()) == {"shiny"}
    for _ in range(5):  # token counting and every job call this
        registry.embeddings()
    assert paths.scans["embeddings"] == 1
    folder = tmp_path / "models" / "embeddings"
    before = folder.stat().st_mtime_ns
    torch.save({"string_to_param": {"*": rand(1, TEXT_WIDTH)}}, folder / "late.pt")
    import os

    os.utime(folder, ns=(before + 10**9, before + 10**9))  # coarse file-system clocks: make the change visible
    assert set(registry.embeddings()) == {"shiny", "late"}  # the folder changed: rescanned without a refresh
    assert paths.scans["embeddings"] == 2
    registry.refresh()
    registry.embeddings()
    assert paths.scans["embeddings"] == 3
