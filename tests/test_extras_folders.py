"""Extras "Batch from Directory": only the data and output folders are read, never a model folder,
and a symlink inside an allowed folder that leads elsewhere is not followed."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from modules import extras
from modules.validation import RequestError
from tests.ui_fixtures import FakeEngine


def _image(path, colour=(200, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_folder_mode_reads_the_data_folder_but_no_model_folder_nor_symlink_escapes(tmp_path):
    data = tmp_path / "data"
    engine = FakeEngine(data)
    roots, refused = extras.input_roots(engine, data)
    inputs = data / "to-upscale"
    _image(inputs / "a.png")
    secret = _image(data / "models" / "Lora" / "private.png", (0, 200, 0))
    outside = _image(tmp_path / "elsewhere" / "outside.png", (0, 0, 200))
    os.symlink(secret, inputs / "b.png")  # into models/ (inside the data folder)
    os.symlink(outside, inputs / "c.png")  # out of the data folder altogether
    os.symlink(data / "models", inputs / "models-link")
    folder = extras.allowed_folder(roots, "to-upscale", "input_dir", refused=refused)
    assert [p.name for p in extras.folder_images(folder, roots, refused=refused)] == ["a.png"]
    for text in ("models/Lora", "to-upscale/models-link/Lora", str(tmp_path / "elsewhere"), "/etc", "../elsewhere"):
        with pytest.raises(RequestError) as err:
            extras.allowed_folder(roots, text, "input_dir", refused=refused)
        assert err.value.field == "input_dir" and "outside" in err.value.message


def test_an_absolute_output_folder_is_allowed(tmp_path):
    data = tmp_path / "data"
    engine = FakeEngine(data)
    engine.update_settings(outdir_img2img_samples=str(tmp_path / "renders"))
    _image(tmp_path / "renders" / "r.png")
    roots, refused = extras.input_roots(engine, data)
    folder = extras.allowed_folder(roots, str(tmp_path / "renders"), "input_dir", refused=refused)
    assert [p.name for p in extras.folder_images(folder, roots, refused=refused)] == ["r.png"]
