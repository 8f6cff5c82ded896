"""VAE: the published layout (SD/SDXL VAE: 248 tensors, 83,653,863 parameters, the count diffusers
reports for the same AutoencoderKL), shape-derived config, attention maths, 8× shapes, the decoder's
reversed `up` storage, and Linear-shaped attention weights loading like conv ones."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modules.nn.vae import SD_VAE, AttnBlock, AutoencoderKL, VAEConfig, normalize_attention_weights, vae_config_from_state_dict
from tests.fixtures_nn import randomize_, tiny_vae_config

SD_VAE_SHAPES = {
    "encoder.conv_in.weight": [128, 3, 3, 3],
    "encoder.down.0.block.0.conv1.weight": [128, 128, 3, 3],
    "encoder.down.0.downsample.conv.weight": [128, 128, 3, 3],
    "encoder.down.1.block.0.nin_shortcut.weight": [256, 128, 1, 1],
    "encoder.down.2.block.0.nin_shortcut.weight": [512, 256, 1, 1],
    "encoder.down.3.block.1.conv2.weight": [512, 512, 3, 3],
    "encoder.mid.attn_1.q.weight": [512, 512, 1, 1],
    "encoder.mid.attn_1.norm.weight": [512],
    "encoder.norm_out.weight": [512],
    "encoder.conv_out.weight": [8, 512, 3, 3],
    "quant_conv.weight": [8, 8, 1, 1],
    "post_quant_conv.weight": [4, 4, 1, 1],
    "decoder.conv_in.weight": [512, 4, 3, 3],
    "decoder.mid.block_1.conv1.weight": [512, 512, 3, 3],
    "decoder.mid.attn_1.proj_out.weight": [512, 512, 1, 1],
    "decoder.up.3.block.0.conv1.weight": [512, 512, 3, 3],
    "decoder.up.3.upsample.conv.weight": [512, 512, 3, 3],
    "decoder.up.1.block.0.conv1.weight": [256, 512, 3, 3],
    "decoder.up.1.block.0.nin_shortcut.weight": [256, 512, 1, 1],
    "decoder.up.1.block.2.conv2.weight": [256, 256, 3, 3],
    "decoder.up.0.block.0.conv1.weight": [128, 256, 3, 3],
    "decoder.up.0.block.0.nin_shortcut.weight": [128, 256, 1, 1],
    "decoder.norm_out.weight": [128],
    "decoder.conv_out.weight": [3, 128, 3, 3],
}


def test_published_vae_layout() -> None:
    model = AutoencoderKL(SD_VAE, device="meta")
    sd = model.state_dict()
    assert len(sd) == 248
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
    for key, shape in SD_VAE_SHAPES.items():
        assert list(sd[key].shape) == shape, key
    for absent in ("decoder.up.0.upsample.conv.weight", "encoder.down.3.downsample.conv.weight",
                   "decoder.up.0.block.3.conv1.weight", "encoder.down.0.block.2.conv1.weight"):
        assert absent not in sd
    prefixed = {"first_stage_model." + k: v for k, v in sd.items()}
    prefixed["model.diffusion_model.out.2.weight"] = torch.empty(4, 320, 3, 3, device="meta")
    assert vae_config_from_state_dict(prefixed) == SD_VAE
    assert vae_config_from_state_dict(sd, prefix="") == SD_VAE


def test_config_from_shapes_variants() -> None:
    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16, embed_dim=16, use_quant_conv=False)
    sd = AutoencoderKL(cfg, device="meta").state_dict()
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in sd)
    assert vae_config_from_state_dict(sd, prefix="") == cfg


def test_attention_block_matches_formula() -> None:
    torch.manual_seed(0)
    block = randomize_(AttnBlock(32), seed=2, std=0.2)
    x = torch.randn(2, 32, 5, 4)
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, 1e-6)
    q, k, v = (F.conv2d(h, m.weight, m.bias).flatten(2) for m in (block.q, block.k, block.v))  # [B, C, N]
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)  # [B, N, N]
    attended = (v @ weights.transpose(1, 2)).reshape(x.shape)
    expected = x + F.conv2d(attended, block.proj_out.weight, block.proj_out.bias)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def tiny_vae() -> AutoencoderKL:
    return randomize_(AutoencoderKL(tiny_vae_config()), seed=5).eval()


def test_tiny_encode_decode_shapes() -> None:
    vae = tiny_vae()
    x = torch.rand(2, 3, 48, 40) * 2 - 1
    with torch.inference_mode():
        moments = vae.encode(x)
        assert moments.shape == (2, 8, 6, 5)
        mean, logvar = moments.chunk(2, dim=1)
        image = vae.decode(mean)
        assert image.shape == (2, 3, 48, 40) and torch.isfinite(image).all()
        assert vae(x).shape == x.shape
    assert vae.config.downscale == 8


def test_decoder_up_blocks_stored_by_resolution() -> None:
    vae, seen = tiny_vae(), {}
    hooks = [vae.decoder.up[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, tuple(a[0].shape[-2:])))
             for i in range(4)]
    hooks += [vae.decoder.up[i].block[0].register_forward_hook(
        lambda m, a, o, i=i: seen.__setitem__(f"block{i}", tuple(a[0].shape[-2:]))) for i in range(4)]
    with torch.inference_mode():
        vae.decode(torch.randn(1, 4, 3, 2))
    for h in hooks:
        h.remove()
    # up.3 runs first at latent size; up.0 runs last at full resolution
    assert [seen[f"block{i}"] for i in (3, 2, 1, 0)] == [(3, 2), (6, 4), (12, 8), (24, 16)]


def test_linear_attention_weights_load_like_conv() -> None:
    vae = tiny_vae()
    sd = vae.state_dict()
    linear = {k: (v[:, :, 0, 0].clone() if ".attn_1." in k and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))
                  else v.clone()) for k, v in sd.items()}
    assert sum(v.ndim == 2 for v in linear.values()) == 8  # q, k, v, proj_out in encoder and decoder
    other = AutoencoderKL(tiny_vae_config())
    other.load_state_dict(linear)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(other.encode(x), vae.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(other.decode(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))),
                                   vae.decode(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))),
                                   rtol=0, atol=0)
    normalized = normalize_attention_weights(linear)
    assert all(normalized[k].shape == sd[k].shape for k in sd)
    assert vae_config_from_state_dict(linear, prefix="") == tiny_vae_config()


def test_bf16_decode_close_to_fp32() -> None:
    vae = tiny_vae()
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = vae.decode(z)
        out = vae.to(torch.bfloat16).decode(z.to(torch.bfloat16)).float()
    assert ((out - ref).norm() / ref.norm()) < 0.05
