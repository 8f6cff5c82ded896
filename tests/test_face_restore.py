"""Face restoration: Haar detection on a drawn face, the crop/paste geometry, spandrel detection of
GFPGAN / RestoreFormer / CodeFormer files through Palette's loader, refusal of other files, the
restore step (size, visibility 0 exact, paste-back leaves far pixels exact, A1111's blend formula),
and the extras step's order and infotext.

Networks are random-weight models in the real key layouts (tests/face_models.py): a tiny RestoreFormer
runs in the default suite; full-size GFPGAN/CodeFormer forward passes are `slow`.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from modules import extras
from modules.face_detect import FaceBox, HaarFaceDetector, crop_matrix, feather_mask, paste, warp_crop
from modules.face_restore import FaceRestoreError, FaceRestorers, LoadedRestorer, run_network
from modules.paths import ModelPaths
from modules.upscalers import UpscalerRegistry
from modules.validation import RequestError
from tests import face_models as fm
from tests import upscaler_models as um

CPU = torch.device("cpu")


def registry(root: Path, dtype: torch.dtype = torch.float32) -> FaceRestorers:
    return FaceRestorers(ModelPaths.create(root), device=CPU, dtype=dtype)


@pytest.fixture(scope="module")
def detector() -> HaarFaceDetector:
    return HaarFaceDetector()


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return fm.restoreformer_tiny(seed=1)


@pytest.fixture
def tiny_root(tmp_path, tiny_sd) -> Path:
    fm.save_pth(tiny_sd, tmp_path / "models" / "GFPGAN" / "RestoreFormer.pth")
    return tmp_path


# ---- detection ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,centre,scale", [(360, (180, 180), 1.0), (480, (150, 300), 0.8), (540, (300, 250), 1.5)])
def test_haar_finds_the_drawn_face_where_it_is(detector, size, centre, scale):
    faces = detector.detect(fm.drawn_face(size=size, centre=centre, scale=scale))
    assert len(faces) == 1
    cx, cy = faces[0].center
    # the skin oval spans x ±55·scale and y -75..85·scale around `centre`: the box centre lies inside it,
    # near the eyes-to-mouth middle
    assert abs(cx - centre[0]) <= 10 * scale and -10 * scale <= cy - centre[1] <= 25 * scale
    assert 100 * scale <= faces[0].size <= 200 * scale


def test_no_face_in_noise_or_a_flat_image(detector):
    assert detector.detect(Image.effect_noise((400, 300), 60).convert("RGB")) == []
    assert detector.detect(Image.new("RGB", (256, 256), (224, 182, 150))) == []


def test_a_large_image_is_searched_scaled_down_and_boxes_come_back_in_its_pixels(detector):
    big = fm.drawn_face(size=360).resize((1440, 1440), Image.Resampling.BICUBIC)
    (face,) = detector.detect(big)
    assert abs(face.center[0] - 720) <= 40 and 680 <= face.center[1] <= 820 and 400 <= face.size <= 800


@pytest.mark.parametrize("turn", [12, -12])
def test_the_eye_line_gives_the_tilt(detector, turn):
    """PIL turns counter-clockwise, so the eye line (y down) tilts by -turn."""
    image = fm.drawn_face(size=540, scale=1.5).rotate(turn, resample=Image.Resampling.BICUBIC, fillcolor=(90, 110, 140))
    (face,) = detector.detect(image)
    assert abs(face.angle + turn) <= 4


# ---- geometry ----------------------------------------------------------------------------------------

def test_crop_matrix_centres_scales_and_levels_the_eye_line():
    box = FaceBox(100.0, 80.0, 150.0, angle=20.0)
    matrix = crop_matrix(box, 512, expand=2.0)
    cx, cy = box.center
    d = 40.0
    eyes = np.array([[cx - d * math.cos(math.radians(20)), cy - d * math.sin(math.radians(20)), 1.0],
                     [cx + d * math.cos(math.radians(20)), cy + d * math.sin(math.radians(20)), 1.0],
                     [cx, cy, 1.0]])
    (lx, ly), (rx, ry), centre = (matrix @ eyes.T).T
    assert np.allclose(centre, (256, 256))
    assert ly == pytest.approx(ry, abs=1e-9) and rx > lx
    assert rx - lx == pytest.approx(2 * d * 512 / 300, rel=1e-9)


def test_feather_mask_is_zero_at_the_edge_one_inside_and_smooth():
    mask = feather_mask(512)
    assert mask[0].max() == 0 and mask[:, -1].max() == 0
    assert mask[60:452, 60:452].min() == 1.0
    row = mask[256, :256]
    assert np.all(np.diff(row) >= 0) and np.abs(np.diff(row)).max() < 0.05


def test_identity_network_gives_back_the_image_and_nothing_outside_the_crop_moves():
    """Crop → unchanged → paste: the warp there and back only softens a little; exact outside the crop."""
    image = np.asarray(Image.effect_noise((300, 240), 40).convert("RGB").filter(ImageFilter.GaussianBlur(2)))
    box = FaceBox(110.0, 60.0, 80.0, angle=-15.0)
    matrix = crop_matrix(box, 256)
    crop = warp_crop(image, matrix, 256)
    pasted = paste(image.astype(np.float32), crop, matrix)
    assert np.abs(pasted - image).mean() < 0.5 and np.abs(pasted - image).max() < 12
    yy, xx = np.mgrid[0:240, 0:300]
    far = np.hypot(xx - box.center[0], yy - box.center[1]) > box.size * 1.8 / math.sqrt(2) + 2
    assert np.array_equal(pasted[far], image[far].astype(np.float32))


# ---- loading -----------------------------------------------------------------------------------------

def test_a_restoreformer_pth_with_params_ema_is_detected_through_our_loader(tiny_root):
    faces = registry(tiny_root)
    infos = {i.name: i for i in faces.list()}
    assert infos["GFPGAN"].path == tiny_root / "models" / "GFPGAN" / "RestoreFormer.pth"
    assert infos["GFPGAN"].unavailable is None and infos["GFPGAN"].folder == tiny_root / "models" / "GFPGAN"
    loaded = faces.load("GFPGAN")
    assert loaded.architecture == "RestoreFormer" and loaded.descriptor.purpose == "FaceSR"


def test_a_full_size_gfpgan_file_is_detected_through_our_loader(tmp_path):
    """GFPGANv1.4's layout (spandrel's GFPGANv1Clean), saved as the release is: {"params_ema": …}."""
    fm.save_pth(fm.gfpgan_full(seed=2), tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth")
    loaded = registry(tmp_path).load("GFPGAN")
    assert loaded.architecture == "GFPGAN" and loaded.path.name == "GFPGANv1.4.pth"


def test_the_newest_named_gfpgan_file_is_chosen(tmp_path, tiny_sd):
    for name in ("GFPGANv1.3.pth", "GFPGANv1.4.pth", "a-restoreformer.pth"):
        fm.save_pth(tiny_sd, tmp_path / "models" / "GFPGAN" / name)
    assert registry(tmp_path).info("GFPGAN").path.name == "GFPGANv1.4.pth"


def test_an_upscaler_in_the_gfpgan_folder_is_refused_naming_the_file_and_its_folder(tmp_path):
    folder = tmp_path / "models" / "GFPGAN"
    folder.mkdir(parents=True)
    save_file(um.esrgan_new(seed=1), str(folder / "RealESRGAN_x4plus.safetensors"))
    with pytest.raises(FaceRestoreError) as err:
        registry(tmp_path).load("GFPGAN")
    text = str(err.value)
    assert "RealESRGAN_x4plus.safetensors" in text and "ESRGAN" in text and "models/ESRGAN/" in text
    assert "not a face-restoration model" in text


def test_a_restoreformer_in_the_codeformer_folder_says_where_it_belongs(tmp_path, tiny_sd):
    pytest.importorskip("spandrel_extra_arches")
    fm.save_pth(tiny_sd, tmp_path / "models" / "Codeformer" / "codeformer-v0.2.0.pth")
    with pytest.raises(FaceRestoreError, match=r"codeformer-v0\.2\.0\.pth: a RestoreFormer model.*models/GFPGAN/"):
        registry(tmp_path).load("CodeFormer")
    import spandrel

    assert "CodeFormer" not in spandrel.MAIN_REGISTRY  # added to a private copy only


def test_a_checkpoint_or_garbage_in_the_gfpgan_folder_is_refused_by_name(tmp_path):
    folder = tmp_path / "models" / "GFPGAN"
    folder.mkdir(parents=True)
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3)}, str(folder / "sd.safetensors"))
    with pytest.raises(FaceRestoreError, match=r"sd\.safetensors: not a face-restoration model for models/GFPGAN/ "
                                               r"\(it looks like a Stable Diffusion checkpoint"):
        registry(tmp_path).load("GFPGAN")
    (folder / "sd.safetensors").unlink()
    (folder / "broken.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(FaceRestoreError, match=r"broken\.pth"):
        registry(tmp_path).load("GFPGAN")


def test_a_missing_model_is_a_request_error_naming_the_folder(tmp_path):
    faces = registry(tmp_path)
    assert faces.unavailable("GFPGAN").startswith("no GFPGAN model: put one (GFPGANv1.4.pth) in ")
    opts = extras.ExtrasOptions(gfpgan_visibility=0.5)
    with pytest.raises(RequestError) as err:
        extras.validate(opts, ["None"], faces)
    assert err.value.field == "gfpgan_visibility" and str(tmp_path / "models" / "GFPGAN") in err.value.message


def test_codeformer_is_listed_unavailable_without_its_optional_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)  # import now raises ImportError
    fm.save_pth({"x": torch.zeros(1)}, tmp_path / "models" / "Codeformer" / "codeformer-v0.2.0.pth")
    info = registry(tmp_path).info("CodeFormer")
    assert "spandrel_extra_arches" in info.unavailable and "non-commercial" in info.unavailable
    assert info.unsupported == info.unavailable
    with pytest.raises(RequestError) as err:
        extras.validate(extras.ExtrasOptions(codeformer_visibility=1.0), ["None"], registry(tmp_path))
    assert err.value.field == "codeformer_visibility" and "spandrel_extra_arches" in err.value.message


@pytest.mark.parametrize("field,value", [("gfpgan_visibility", 1.5), ("codeformer_visibility", -0.1),
                                         ("codeformer_weight", 2), ("gfpgan_visibility", "a lot")])
def test_out_of_range_face_fields_are_request_errors_naming_them(tmp_path, field, value):
    with pytest.raises(RequestError) as err:
        extras.validate(extras.ExtrasOptions(**{field: value}), ["None"], registry(tmp_path))
    assert err.value.field == field and "between 0 and 1" in err.value.message


# ---- restoring ---------------------------------------------------------------------------------------

def test_our_call_matches_spandrels_own_wrapper_on_restoreformer(tiny_root, tiny_sd):
    """Independent range check: spandrel's RestoreFormer wrapper maps [0, 1] → [0, 1] itself; our raw call
    takes and gives [-1, 1] (A1111's face_restoration_utils: normalise by 0.5/0.5, min_max=(-1, 1))."""
    import spandrel

    loaded = registry(tiny_root).load("GFPGAN")
    x01 = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    ours = run_network(loaded, x01 * 2 - 1)
    with torch.inference_mode():
        theirs = spandrel.ModelLoader().load_from_state_dict(dict(tiny_sd))(x01)
    assert torch.allclose(((ours + 1) / 2).clamp(0, 1), theirs, atol=1e-5)  # spandrel clamps its output


def test_restore_keeps_the_size_changes_the_face_and_nothing_far_from_it(tiny_root, detector):
    faces = registry(tiny_root)
    image = fm.drawn_face(size=360)
    (box,) = detector.detect(image)
    restored, count = faces.restore(image, "GFPGAN", 1.0)
    assert count == 1 and restored.size == image.size and restored.mode == "RGB"
    a, b = np.asarray(image, dtype=np.int16), np.asarray(restored, dtype=np.int16)
    cx, cy = box.center
    core = (slice(int(cy - box.size / 4), int(cy + box.size / 4)), slice(int(cx - box.size / 4), int(cx + box.size / 4)))
    assert np.abs(a[core] - b[core]).mean() > 5  # random weights: the face region is visibly different
    yy, xx = np.mgrid[0:360, 0:360]
    reach = box.size * 1.8 / math.sqrt(2) * (1 + 1e-6) + 2  # the crop's half-diagonal, any rotation
    far = np.hypot(xx - cx, yy - cy) > reach
    assert far.sum() > 1000 and np.array_equal(a[far], b[far])


def test_visibility_zero_is_the_input_and_half_is_the_mean_of_input_and_full(tiny_root):
    faces = registry(tiny_root)
    image = fm.drawn_face(size=360)
    zero, count = faces.restore(image, "GFPGAN", 0.0)
    assert count == 0 and np.array_equal(np.asarray(zero), np.asarray(image))
    full, _ = faces.restore(image, "GFPGAN", 1.0)
    half, _ = faces.restore(image, "GFPGAN", 0.5)
    expected = (np.asarray(image, dtype=np.float32) + np.asarray(full, dtype=np.float32)) / 2
    assert np.abs(np.asarray(half, dtype=np.float32) - expected).max() <= 1.0  # 1/255 on [0, 1]


def test_alpha_is_kept(tiny_root):
    image = fm.drawn_face(size=360).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 200))
    restored, _ = registry(tiny_root).restore(image, "GFPGAN", 0.7)
    assert restored.mode == "RGBA" and restored.getchannel("A").getextrema() == (200, 200)


def test_no_face_leaves_the_image_unchanged_and_logs_it(tiny_root, caplog):
    image = Image.effect_noise((200, 160), 50).convert("RGB")
    with caplog.at_level(logging.INFO, logger="modules.face_restore"):
        restored, count = registry(tiny_root).restore(image, "GFPGAN", 1.0)
    assert count == 0 and np.array_equal(np.asarray(restored), np.asarray(image))
    assert "no face found" in caplog.text


def test_half_precision_nans_switch_the_model_to_fp32():
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (x * self.w * (float("nan") if x.dtype != torch.float32 else 1.0),)

    class Descriptor:
        def __init__(self) -> None:
            self.model = Net().to(torch.bfloat16)
            self.device = CPU

        def to(self, *, dtype: torch.dtype) -> "Descriptor":
            self.model.to(dtype)
            return self

    loaded = LoadedRestorer("GFPGAN", Path("x.pth"), Descriptor(), "RestoreFormer", torch.bfloat16)
    x = torch.linspace(-1, 1, 12).reshape(1, 3, 2, 2)
    out = run_network(loaded, x)
    assert torch.equal(out, x) and loaded.dtype == torch.float32 and loaded.descriptor.model.w.dtype == torch.float32


# ---- the extras step ---------------------------------------------------------------------------------

class RecordingRestorers:
    """Stands in for FaceRestorers: records the calls, brightens the image by a known amount."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def unavailable(self, name: str) -> None:
        return None

    def restore(self, image, name, visibility, *, codeformer_weight=0.5):
        self.calls.append((name, visibility, codeformer_weight))
        return image.point(lambda v: min(255, v + 10)), 1


def test_gfpgan_runs_before_codeformer_and_the_infotext_is_a1111s():
    fake = RecordingRestorers()
    opts = extras.ExtrasOptions(gfpgan_visibility=0.5, codeformer_visibility=0.25, codeformer_weight=0.7)
    image, info = extras.restore_faces(fake, Image.new("RGB", (8, 8), (100, 100, 100)), opts)
    assert [c[0] for c in fake.calls] == ["GFPGAN", "CodeFormer"] and fake.calls[1][2] == 0.7
    assert info == "GFPGAN visibility: 0.5, CodeFormer visibility: 0.25, CodeFormer weight: 0.7"
    assert image.getpixel((0, 0)) == (120, 120, 120)
    none, text = extras.restore_faces(fake, image, extras.ExtrasOptions())
    assert text == "" and none is image and len(fake.calls) == 2


def test_extras_run_upscales_then_restores_with_the_real_network(tiny_root):
    paths = ModelPaths.create(tiny_root)
    engine = SimpleNamespace(settings=None, upscalers=UpscalerRegistry(paths, device=CPU, dtype=torch.float32),
                             face_restorers=FaceRestorers(paths, device=CPU, dtype=torch.float32))
    source = fm.drawn_face(size=240, scale=0.6)
    opts = extras.ExtrasOptions(upscaling_resize=1.5, upscaler_1="Lanczos", gfpgan_visibility=0.5)
    result = extras.run(engine, [(source, "")], opts, save_output=False)
    assert result.infotexts == ("Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos, GFPGAN visibility: 0.5",)
    upscaled = source.resize((360, 360), Image.Resampling.LANCZOS)
    assert result.images[0].size == (360, 360)
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(upscaled))
    # the face was found in the upscaled image, so the restore happened after the upscale
    corner = (slice(0, 20), slice(0, 20))
    assert np.array_equal(np.asarray(result.images[0])[corner], np.asarray(upscaled)[corner])


# ---- full-size networks (slow) -----------------------------------------------------------------------

@pytest.mark.slow
def test_full_size_gfpgan_restores_deterministically(tmp_path):
    fm.save_pth(fm.gfpgan_full(seed=3), tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth")
    faces = registry(tmp_path)
    image = fm.drawn_face(size=360)
    first, count = faces.restore(image, "GFPGAN", 1.0)
    second, _ = faces.restore(image, "GFPGAN", 1.0)
    assert count == 1 and first.size == image.size
    assert np.array_equal(np.asarray(first), np.asarray(second))  # the file's stored noise, not fresh noise
    assert not np.array_equal(np.asarray(first), np.asarray(image))


@pytest.mark.slow
def test_full_size_codeformer_weight_changes_the_result(tmp_path):
    pytest.importorskip("spandrel_extra_arches")
    fm.save_pth(fm.codeformer_full(seed=4), tmp_path / "models" / "Codeformer" / "codeformer-v0.2.0.pth")
    faces = registry(tmp_path)
    assert faces.load("CodeFormer").architecture == "CodeFormer"
    image = fm.drawn_face(size=360)
    low, count = faces.restore(image, "CodeFormer", 1.0, codeformer_weight=0.0)
    high, _ = faces.restore(image, "CodeFormer", 1.0, codeformer_weight=1.0)
    assert count == 1 and low.size == image.size
    assert not np.array_equal(np.asarray(low), np.asarray(high))



def test_the_extras_tab_notes_only_what_no_model_file_can_fix(tmp_path, monkeypatch):
    from webui.tabs.upscale import face_note

    engine = SimpleNamespace(face_restorers=registry(tmp_path))
    if importlib.util.find_spec("spandrel_extra_arches") is not None:
        assert face_note(engine) == ""  # missing files are reported on Generate, naming the folder
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)
    note = face_note(engine)
    assert note.startswith("CodeFormer is not available: CodeFormer needs the optional package") and "GFPGAN" not in note


def test_a_face_model_in_an_upscaler_folder_is_sent_to_the_face_folders(tmp_path, tiny_sd):
    """A RestoreFormer has encoder.down/decoder.up keys like a VAE: the upscaler registry still names it."""
    fm.save_pth(tiny_sd, tmp_path / "models" / "ESRGAN" / "RestoreFormer.pth")
    upscalers = UpscalerRegistry(ModelPaths.create(tmp_path), device=CPU, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"RestoreFormer\.pth: a RestoreFormer face-restoration model, not an "
                                         r"upscaler: put it in models/GFPGAN/"):
        upscalers.load("RestoreFormer")
