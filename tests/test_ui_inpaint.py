"""The Inpaint tab without a browser: its widgets edit the inpaint fields, the brush layers become the mask."""
from __future__ import annotations

import pytest
from PIL import Image

from modules.queue import JobQueue
from modules.types import GenerationRequest
from tests.ui_fixtures import FakeEngine
from webui import bindings
from webui.tabs import inpaint as tab


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    engine = FakeEngine(tmp_path_factory.mktemp("ui-inpaint"))
    queue = JobQueue(engine)
    from webui.app import build_ui

    demo = build_ui(engine, queue)
    yield demo.palette_context
    queue.shutdown()


def test_the_tab_binds_every_inpaint_field(ui):
    widgets = ui.widgets["inpaint"]
    assert set(widgets) == set(bindings.INPAINT_FIELDS)
    labels = {name: w.label for name, w in widgets.items()}
    assert labels["mask_blur"] == "Mask blur" and labels["inpainting_fill"] == "Masked content"
    assert labels["inpaint_full_res"] == "Inpaint area" and labels["inpainting_mask_invert"] == "Mask mode"
    assert ui.images["inpaint"] is widgets["init_images"]


def painted_layer(size=(40, 30), box=(5, 5, 15, 20)) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), box)
    return layer


def test_brush_layers_become_the_mask_and_sliders_the_outpaint_padding():
    background = Image.new("RGBA", (40, 30), (10, 200, 30, 255))
    values = tab.prepare_values({"init_images": {"background": background, "layers": [painted_layer()], "composite": None},
                                 "mask": None, "mask_source": tab.DRAW, "outpaint_left": 16.0, "outpaint_right": 0,
                                 "outpaint_up": None, "outpaint_down": 8})
    assert values["init_images"].mode == "RGB" and values["init_images"].size == (40, 30)
    mask = values["mask"]
    assert mask.mode == "L" and mask.getbbox() == (5, 5, 15, 20) and mask.getpixel((6, 6)) == 255
    assert values["outpaint_pad"] == (16, 0, 0, 8)
    request = bindings.request_from_values(values)
    assert request.mask is mask and request.outpaint_pad == (16, 0, 0, 8) and request.is_img2img


def test_unpainted_editor_sends_an_empty_mask_and_upload_wins_when_chosen():
    background = Image.new("RGB", (40, 30))
    empty = tab.prepare_values({"init_images": {"background": background, "layers": [Image.new("RGBA", (40, 30))]},
                                "mask": None, "mask_source": tab.DRAW})
    assert empty["mask"].getbbox() is None and empty["outpaint_pad"] == (0, 0, 0, 0)
    uploaded = Image.new("L", (40, 30), 255)
    chosen = tab.prepare_values({"init_images": {"background": background, "layers": [painted_layer()]},
                                 "mask": uploaded, "mask_source": tab.UPLOAD})
    assert chosen["mask"] is uploaded
    with pytest.raises(ValueError, match="Upload a mask"):
        tab.prepare_values({"init_images": {"background": background, "layers": []}, "mask": None,
                            "mask_source": tab.UPLOAD})
    with pytest.raises(ValueError, match="needs an image"):
        tab.prepare_values({"init_images": {"background": None, "layers": []}, "mask": None, "mask_source": tab.DRAW})


def test_radio_labels_map_to_a1111_indices_and_back():
    request = bindings.request_from_values({"inpainting_fill": "latent noise", "inpaint_full_res": "Only masked",
                                            "inpainting_mask_invert": "Inpaint not masked", "mask_blur": 8.0})
    assert (request.inpainting_fill, request.inpaint_full_res, request.inpainting_mask_invert, request.mask_blur) == (2, True, 1, 8)
    back = bindings.values_from_request(request, ("inpainting_fill", "inpaint_full_res", "inpainting_mask_invert"))
    assert back == {"inpainting_fill": "latent noise", "inpaint_full_res": "Only masked",
                    "inpainting_mask_invert": "Inpaint not masked"}
    with pytest.raises(ValueError, match="not one of"):
        bindings.request_from_values({"inpainting_fill": "paint"})


def test_an_a1111_inpaint_infotext_fills_the_tab_but_never_the_mask():
    text = ("a beach\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 8, Seed: 1, Size: 512x512, Denoising strength: 0.91, "
            "Mask blur: 8, Inpaint area: Only masked, Masked area padding: 48, Masked content: fill, "
            "Mask mode: Inpaint not masked, Version: v1.9.4")
    names = tuple(n for n in bindings.INPAINT_FIELDS if n not in bindings.PASTE_SKIPS)
    values = bindings.values_from_infotext(text, names)
    assert values["mask_blur"] == 8 and values["inpaint_full_res"] == "Only masked"
    assert values["inpaint_full_res_padding"] == 48 and values["inpainting_fill"] == "fill"
    assert values["inpainting_mask_invert"] == "Inpaint not masked" and values["denoising_strength"] == 0.91
    assert "mask" not in values and "init_images" not in values
    assert GenerationRequest().inpainting_fill == 1  # the tab's default "original", as A1111's UI
