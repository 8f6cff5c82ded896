"""txt2img / img2img with A1111's `restore_faces`: the chosen face restorer runs on every decoded picture
(before an inpaint paste-back), the infotext says "Face restoration: <model>" in A1111's place, the
"Restore faces" setting applies when the request says nothing, and a restorer that cannot run is a
request error naming `restore_faces` before any model work. Tiny random SD1 and RestoreFormer models in
their real key layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from modules import infotext
from modules.devices import DevicePlan
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.types import GenerationRequest
from modules.validation import RequestError
from tests import face_models as fm
from tests.tiny_models import write_tiny_checkpoint

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
CKPT = "tiny-sd1.safetensors"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-faces")
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / CKPT, "sd1")
    fm.save_pth(fm.restoreformer_tiny(seed=1), root / "models" / "GFPGAN" / "RestoreFormer.pth")
    return Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)


def _req(**kw) -> GenerationRequest:
    base = dict(prompt="a portrait", negative_prompt="", steps=2, width=64, height=64, seed=7,
                sampler_name="Euler", cfg_scale=5.0, batch_size=2, do_not_save=True, checkpoint=CKPT)
    return GenerationRequest(**{**base, **kw})


class Spy:
    """Stands in for FaceRestorers.restore: records its calls and inverts the picture (so the test sees
    that what comes back is what the restorer returned)."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, str, float, float]] = []

    def __call__(self, image: Image.Image, name: str, visibility: float, *, codeformer_weight: float = 0.5):
        self.calls.append((np.asarray(image).copy(), name, visibility, codeformer_weight))
        return ImageOps.invert(image.convert("RGB")), 1


def test_every_picture_goes_through_the_restorer_and_the_infotext_says_so(engine, monkeypatch):
    plain = engine.generate(_req())
    assert "Face restoration" not in plain.infotexts[0] and plain.info["restore_faces"] is False
    spy = Spy()
    monkeypatch.setattr(engine.face_restorers, "restore", spy)
    restored = engine.generate(_req(restore_faces=True, override_settings={"code_former_weight": 0.25}))
    assert [(name, vis, weight) for _, name, vis, weight in spy.calls] == [("GFPGAN", 1.0, 0.25)] * 2
    for before, seen, after in zip(plain.images, spy.calls, restored.images):
        assert np.array_equal(seen[0], np.asarray(before))  # the decoded picture, same seed
        assert np.array_equal(np.asarray(after), 255 - np.asarray(before))  # what the restorer gave back
    text = restored.infotexts[0]
    assert "Seed: 7, Face restoration: GFPGAN, Size: 64x64" in text  # A1111's key order
    assert infotext.parse(text)["Face restoration"] == "GFPGAN"
    assert (restored.info["restore_faces"], restored.info["face_restoration_model"]) == (True, "GFPGAN")


def test_the_real_restorer_runs_and_a_picture_without_a_face_is_unchanged(engine):
    plain = engine.generate(_req(batch_size=1))
    restored = engine.generate(_req(batch_size=1, restore_faces=True))
    assert np.array_equal(np.asarray(restored.images[0]), np.asarray(plain.images[0]))
    assert "Face restoration: GFPGAN" in restored.infotexts[0]


def test_the_setting_applies_when_the_request_says_nothing_and_false_wins_over_it(engine, monkeypatch):
    spy = Spy()
    monkeypatch.setattr(engine.face_restorers, "restore", spy)
    on = engine.generate(_req(batch_size=1, override_settings={"face_restoration": True}))
    assert len(spy.calls) == 1 and "Face restoration: GFPGAN" in on.infotexts[0]
    off = engine.generate(_req(batch_size=1, restore_faces=False, override_settings={"face_restoration": True}))
    assert len(spy.calls) == 1 and "Face restoration" not in off.infotexts[0]


def test_img2img_inpaint_restores_before_the_paste_back(engine, monkeypatch):
    spy = Spy()
    monkeypatch.setattr(engine.face_restorers, "restore", spy)
    source = Image.new("RGB", (64, 64), (30, 160, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = engine.generate(_req(batch_size=1, restore_faces=True, init_images=(source,), mask=mask,
                                  denoising_strength=0.8, mask_blur=0))
    out = np.asarray(result.images[0])
    assert len(spy.calls) == 1
    assert (out[:8, :8] == (30, 160, 90)).all()  # outside the mask: the original, pasted over the restored picture
    assert "Face restoration: GFPGAN" in result.infotexts[0]


def test_a_restorer_that_cannot_run_is_a_request_error_before_any_model_work(tmp_path):
    empty = Engine(ModelPaths.create(tmp_path), plan=PLAN, outputs_root=tmp_path)  # no checkpoint, no GFPGAN
    with pytest.raises(RequestError) as err:
        empty.validate(_req(restore_faces=True))
    assert err.value.field == "restore_faces"
    assert "GFPGAN" in str(err.value) and str(tmp_path / "models" / "GFPGAN") in str(err.value)
    with pytest.raises(RequestError) as err:
        empty.validate(_req(override_settings={"face_restoration": True, "face_restoration_model": "CodeFormer"}))
    assert err.value.field == "restore_faces" and "CodeFormer" in str(err.value)
    empty.validate(_req(restore_faces=False, override_settings={"face_restoration": True}))  # off: nothing to check
