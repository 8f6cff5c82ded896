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


def test_extras_files_are_saved_by_outputs_save_image_with_the_sources_chunks(tmp_path):
    """One saver for generations and Extras: the counter is shared, Extras keeps the source's chunks and
    adds `postprocessing`/`extras` (A1111), a nameless source gets just the number."""
    from modules import outputs
    from modules.infotext import read_infotext

    folder = tmp_path / "extras-images"
    first = outputs.save_image(Image.new("RGB", (4, 4)), folder, outputs.NameContext(seed=7), infotext="a cat",
                               per_date_folder=False)
    assert first.name == "00000-7.png"
    line = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    named = extras.save(Image.new("RGB", (4, 4)), folder, line, source_chunks={"parameters": "a fox", "note": "hi"},
                        basename="in0")
    nameless = extras.save(Image.new("RGB", (4, 4)), folder, line)
    jpeg = extras.save(Image.new("RGB", (4, 4)), folder, line, basename="x", fmt="jpg")
    assert [named.name, nameless.name, jpeg.name] == ["00001-in0.png", "00002.png", "00003-x.jpg"]
    with Image.open(named) as image:
        assert {k: image.info[k] for k in ("parameters", "note", "postprocessing", "extras")} == {
            "parameters": "a fox", "note": "hi", "postprocessing": line, "extras": line}
    with Image.open(nameless) as image:
        assert "parameters" not in image.info and image.info["extras"] == line
    with Image.open(jpeg) as image:
        assert read_infotext(image) == line
    assert sorted(p.name for p in folder.iterdir()) == ["00000-7.png", "00001-in0.png", "00002.png", "00003-x.jpg"]
    assert not hasattr(extras, "_SAVE_LOCK")  # one counter lock, in modules.outputs


def test_every_output_folder_setting_is_served_and_readable(tmp_path):
    """One list of output-folder settings (modules.config.OUTDIR_SETTINGS, every `outdir_*` field) feeds
    both the web server's served folders and Extras' readable roots: a folder added to Settings is in both."""
    from dataclasses import fields

    from modules.config import OUTDIR_SETTINGS, Settings
    from webui.server import served_folders

    names = [f.name for f in fields(Settings) if f.name.startswith("outdir_")]
    assert list(OUTDIR_SETTINGS) == names and len(names) >= 4
    data = tmp_path / "data"
    engine = FakeEngine(data)
    folders = {name: tmp_path / "out" / name for name in names}
    engine.update_settings(**{name: str(folder) for name, folder in folders.items()})
    expected = sorted(str(folder.resolve()) for folder in folders.values())
    assert served_folders(engine, data) == expected
    roots, _ = extras.input_roots(engine, data)
    assert sorted(str(p.resolve()) for p in roots[1:]) == expected
