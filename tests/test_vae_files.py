"""The "SD VAE" setting: Automatic sidecar, None, named files; VAE files with or without the prefix."""
import pytest
import torch
from safetensors.torch import save_file

from modules.devices import DevicePlan
from modules.nn.vae import AutoencoderKL
from modules.vae_files import choose_vae_path, load_vae_file, sidecar_vae
from modules.weights_io import WeightFileError
from tests.fixtures_nn import randomize_, tiny_vae_config

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


def _vae_state(prefix=""):
    model = randomize_(AutoencoderKL(tiny_vae_config()), seed=3)
    return model, {prefix + k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_vae_file_loads_and_decodes_like_the_original(tmp_path, prefix):
    model, sd = _vae_state(prefix)
    path = tmp_path / "x.vae.safetensors"
    save_file(sd, str(path))
    vae = load_vae_file(path, PLAN, scaling=0.18215)
    z = torch.randn(1, 4, 4, 4)
    expected = ((model.decode(z / 0.18215) + 1) / 2).clamp(0, 1)
    assert torch.allclose(vae.decode(z), expected, atol=1e-5)


def test_incomplete_or_foreign_vae_file_is_a_clear_error(tmp_path):
    _, sd = _vae_state()
    del sd["decoder.up.0.block.0.conv1.weight"]
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightFileError, match=r"bad\.safetensors: incomplete VAE"):
        load_vae_file(path, PLAN, scaling=0.18215)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(WeightFileError, match=r"lora\.safetensors: not a VAE"):
        load_vae_file(tmp_path / "lora.safetensors", PLAN, scaling=0.18215)


def test_choose_vae_path(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    assert sidecar_vae(ckpt) is None and choose_vae_path("Automatic", ckpt, []) is None
    (tmp_path / "model.vae.safetensors").write_bytes(b"")
    assert choose_vae_path("Automatic", ckpt, []) == tmp_path / "model.vae.safetensors"
    assert choose_vae_path("None", ckpt, []) is None
    other = tmp_path / "vae-ft-mse.safetensors"
    assert choose_vae_path("vae-ft-mse.safetensors", ckpt, [other]) == other
    with pytest.raises(FileNotFoundError, match="SD VAE 'nope' not found"):
        choose_vae_path("nope", ckpt, [other])
