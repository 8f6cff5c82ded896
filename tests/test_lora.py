"""LoRA formats against dense re-computations, on tiny real-layout SD1 / SDXL models loaded from files.

Every format is written as a file in its own key layout, applied through `modules.lora.apply_loras`
(clones of the bundle's patchers), and every patched weight is compared with an independent formula.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.checkpoints import load_checkpoint
from modules.devices import DevicePlan
from modules.lora import apply_loras, lora_family, open_lora
from modules.lora_keys import KeyMap, diffusers_blocks
from modules.nn.unet import SD15_UNET, SDXL_UNET
from modules.types import LoraRef
from tests.tiny_models import write_tiny_checkpoint

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)

# Modules of the tiny SD1 model (LDM names) and their diffusers / kohya names.
TO_Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # Linear 32 → 32
TO_K2 = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"  # Linear 64 (context) → 32
PROJ_IN = "input_blocks.1.1.proj_in"  # Conv2d 1×1 (SD1 layout)
CONV1 = "input_blocks.1.0.in_layers.2"  # Conv2d 3×3
SHORTCUT = "input_blocks.3.0.skip_connection"  # Conv2d 1×1 32 → 64
UPSAMPLE = "output_blocks.1.2.conv"  # Conv2d 3×3 64 → 64
NORM1 = "input_blocks.1.1.transformer_blocks.0.norm1"  # LayerNorm
OUT_FF = "output_blocks.3.1.transformer_blocks.0.ff.net.2"  # Linear 128 → 32
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"
TE_FC1 = "text_model.encoder.layers.1.mlp.fc1"
KOHYA = {
    TO_Q: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    TO_K2: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    PROJ_IN: "lora_unet_down_blocks_0_attentions_0_proj_in",
    CONV1: "lora_unet_down_blocks_0_resnets_0_conv1",
    SHORTCUT: "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
    UPSAMPLE: "lora_unet_up_blocks_0_upsamplers_0_conv",
    NORM1: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1",
    OUT_FF: "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_2",
    TE_Q: "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    TE_FC1: "lora_te_text_model_encoder_layers_1_mlp_fc1",
}


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors", "sd1")
    return load_checkpoint(path, PLAN)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sdxl.safetensors", "sdxl")
    return load_checkpoint(path, PLAN)


_GEN = torch.Generator().manual_seed(1234)


def rand(*shape, std=0.1):
    return torch.randn(shape, generator=_GEN) * std


def write(tmp_path: Path, name: str, tensors: dict, metadata=None) -> Path:
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    else:
        torch.save(tensors, path)
    return path


def module_of(bundle, module: str):
    if module.startswith("text_model"):
        return bundle.text.units[0].model.get_submodule(module)
    return bundle.unet.model.get_submodule(module)


def weight(bundle, module: str) -> torch.Tensor:
    return module_of(bundle, module).weight.detach().clone()


def apply(bundle, path: Path, te=1.0, unet=1.0, dyn=None, name="x"):
    keymap = KeyMap(bundle.unet.model, [u.model for u in bundle.text.units])
    return apply_loras(bundle, [(LoraRef(name, te, unet, dyn), open_lora(path, name))], keymap)


def patched_weights(applied, *modules, part=-1, suffix=".weight") -> dict[str, torch.Tensor]:
    """The patched tensors while the clone's patches are on (UNet: part -1, text encoders 0, 1)."""
    patcher = applied.bundle.unet if part == -1 else applied.bundle.text_patchers[part]
    with patcher.applied() as model:
        sd = model.state_dict()
        return {m: sd[m + suffix].clone() for m in modules}


def close(a, b):
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


# ---- key map ------------------------------------------------------------------------------------------

def _a1111_reference(name: str) -> str | None:
    """A1111's hand-written SD1 converter (extensions-builtin/Lora/networks.py), an independent
    reference for the block numbering of the standard SD1.5 UNet."""
    import re

    conv = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection",
            "norm1": "in_layers_0", "norm2": "out_layers_0"}  # (A1111 lacks the norms; LDM's layout has them there)
    if m := re.match(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = conv.get(rest, rest) if kind == "resnets" else rest
        return f"input_blocks_{1 + b * 3 + i}_{1 if kind == 'attentions' else 0}_{rest}"
    if m := re.match(r"mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        rest = conv.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{rest}"
    if m := re.match(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = conv.get(rest, rest) if kind == "resnets" else rest
        return f"output_blocks_{b * 3 + i}_{1 if kind == 'attentions' else 0}_{rest}"
    if m := re.match(r"down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"up_blocks_(\d+)_upsamplers_0_conv", name):
        return f"output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
    return None


def test_diffusers_names_of_sd15_match_a1111s_converter():
    from modules.nn.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(SD15_UNET)
    keymap = KeyMap(unet, [])
    checked = 0
    for name, target in keymap.names.items():
        if not name.startswith("lora_unet_") or name.startswith(("lora_unet_input", "lora_unet_output", "lora_unet_middle")):
            continue
        expected = _a1111_reference(name[len("lora_unet_"):])
        if expected is not None:
            assert target.module.replace(".", "_") == expected, name
            checked += 1
    assert checked > 300  # every resnet / attention / sampler module of SD1.5


def test_sdxl_block_map_follows_the_diffusers_layout():
    blocks = {v[0]: k for k, v in diffusers_blocks(SDXL_UNET).items()}
    assert blocks["down_blocks.1.attentions.0"] == "input_blocks.4.1"
    assert blocks["down_blocks.2.attentions.1"] == "input_blocks.8.1"
    assert "down_blocks.0.attentions.0" not in blocks  # SDXL's first level has no attention
    assert blocks["down_blocks.1.downsamplers.0.conv"] == "input_blocks.6.0.op"
    assert blocks["up_blocks.0.attentions.2"] == "output_blocks.2.1"
    assert blocks["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.2.conv"
    assert blocks["up_blocks.1.upsamplers.0.conv"] == "output_blocks.5.2.conv"
    assert blocks["up_blocks.2.resnets.2"] == "output_blocks.8.0"
    assert blocks["mid_block.attentions.0"] == "middle_block.1"


# ---- formats ------------------------------------------------------------------------------------------

def _lora_tensors(stem: str, out: int, inp: int, rank: int, alpha: float | None, kernel=None):
    down = rand(rank, inp, *kernel) if kernel else rand(rank, inp)
    up = rand(out, rank, 1, 1) if kernel else rand(out, rank)
    t = {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
    if alpha is not None:
        t[f"{stem}.alpha"] = torch.tensor(alpha)
    return t


def test_kohya_lora_linear_conv_and_text_encoder(sd1, tmp_path):
    tensors = {}
    tensors |= _lora_tensors(KOHYA[TO_Q], 32, 32, 4, 2.0)
    tensors |= _lora_tensors(KOHYA[TO_K2], 32, 64, 4, 8.0)
    tensors |= _lora_tensors(KOHYA[PROJ_IN], 32, 32, 2, 1.0, kernel=(1, 1))
    tensors |= _lora_tensors(KOHYA[SHORTCUT], 64, 32, 2, None, kernel=(1, 1))
    tensors |= _lora_tensors(KOHYA[TE_Q], 64, 64, 4, 1.0)
    tensors |= _lora_tensors(KOHYA[TE_FC1], 256, 64, 8, 4.0)
    path = write(tmp_path, "kohya.safetensors", tensors)
    before = {m: weight(sd1, m) for m in (TO_Q, TO_K2, PROJ_IN, SHORTCUT, TE_Q, TE_FC1)}
    applied = apply(sd1, path, te=0.5, unet=0.8)
    unet = patched_weights(applied, TO_Q, TO_K2, PROJ_IN, SHORTCUT)
    text = patched_weights(applied, TE_Q, TE_FC1, part=0)
    for module, rank, alpha, strength, got in (
        (TO_Q, 4, 2.0, 0.8, unet[TO_Q]), (TO_K2, 4, 8.0, 0.8, unet[TO_K2]),
        (PROJ_IN, 2, 1.0, 0.8, unet[PROJ_IN]), (SHORTCUT, 2, None, 0.8, unet[SHORTCUT]),
        (TE_Q, 4, 1.0, 0.5, text[TE_Q]), (TE_FC1, 8, 4.0, 0.5, text[TE_FC1]),
    ):
        up = tensors[f"{KOHYA[module]}.lora_up.weight"].flatten(1)
        down = tensors[f"{KOHYA[module]}.lora_down.weight"].flatten(1)
        scale = alpha / rank if alpha is not None else 1.0
        close(got, before[module] + strength * scale * (up @ down).reshape(before[module].shape))
    assert applied.skipped_keys == {"x": 0}
    # the cached bundle is untouched and its weights are bit-exactly back
    assert not sd1.unet.is_patched and not any(p.is_patched for p in sd1.text_patchers)
    for module, w in before.items():
        assert torch.equal(weight(sd1, module), w), module


def test_kohya_names_in_ldm_form_and_pickled_files(sd1, tmp_path):
    stem = "lora_unet_" + TO_Q.replace(".", "_")
    tensors = _lora_tensors(stem, 32, 32, 4, 4.0)
    path = write(tmp_path, "ldm.pt", tensors)
    before = weight(sd1, TO_Q)
    got = patched_weights(apply(sd1, path), TO_Q)[TO_Q]
    close(got, before + tensors[f"{stem}.lora_up.weight"] @ tensors[f"{stem}.lora_down.weight"])


def test_locon_3x3_and_tucker_mid(sd1, tmp_path):
    conv = _lora_tensors(KOHYA[CONV1], 32, 32, 4, 2.0, kernel=(3, 3))
    stem = KOHYA[UPSAMPLE]
    tucker = {f"{stem}.lora_down.weight": rand(3, 64, 1, 1), f"{stem}.lora_up.weight": rand(64, 3, 1, 1),
              f"{stem}.lora_mid.weight": rand(3, 3, 3, 3), f"{stem}.alpha": torch.tensor(3.0)}
    path = write(tmp_path, "locon.safetensors", conv | tucker)
    before = {m: weight(sd1, m) for m in (CONV1, UPSAMPLE)}
    got = patched_weights(apply(sd1, path, unet=0.7), CONV1, UPSAMPLE)
    up, down = conv[f"{KOHYA[CONV1]}.lora_up.weight"][:, :, 0, 0], conv[f"{KOHYA[CONV1]}.lora_down.weight"]
    expected = torch.einsum("or,rikl->oikl", up, down) * (2.0 / 4)
    close(got[CONV1], before[CONV1] + 0.7 * expected)
    u, d, mid = (tucker[f"{stem}.{p}.weight"] for p in ("lora_up", "lora_down", "lora_mid"))
    expected = torch.einsum("abkl,oa,bi->oikl", mid, u[:, :, 0, 0], d[:, :, 0, 0])  # 3/3 = 1
    close(got[UPSAMPLE], before[UPSAMPLE] + 0.7 * expected)


def test_peft_and_old_diffusers_layouts(sd1, tmp_path):
    unet_q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    unet_out = "unet.up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2"
    te_q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    tensors = {
        f"{unet_q}.lora_A.weight": rand(4, 32), f"{unet_q}.lora_B.weight": rand(32, 4),
        f"{unet_out}.lora.down.weight": rand(2, 128), f"{unet_out}.lora.up.weight": rand(32, 2),
        f"{te_q}.lora_linear_layer.down.weight": rand(2, 64), f"{te_q}.lora_linear_layer.up.weight": rand(64, 2),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": rand(2, 64),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": rand(32, 2),
    }
    path = write(tmp_path, "peft.safetensors", tensors)
    before = {m: weight(sd1, m) for m in (TO_Q, OUT_FF, TO_K2, TE_Q)}
    applied = apply(sd1, path, te=0.3, unet=0.3)
    unet = patched_weights(applied, TO_Q, OUT_FF, TO_K2)
    close(unet[TO_Q], before[TO_Q] + 0.3 * tensors[f"{unet_q}.lora_B.weight"] @ tensors[f"{unet_q}.lora_A.weight"])
    close(unet[OUT_FF], before[OUT_FF] + 0.3 * tensors[f"{unet_out}.lora.up.weight"] @ tensors[f"{unet_out}.lora.down.weight"])
    proc = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora"
    close(unet[TO_K2], before[TO_K2] + 0.3 * tensors[f"{proc}.up.weight"] @ tensors[f"{proc}.down.weight"])
    te = patched_weights(applied, TE_Q, part=0)[TE_Q]
    close(te, before[TE_Q] + 0.3 * tensors[f"{te_q}.lora_linear_layer.up.weight"] @ tensors[f"{te_q}.lora_linear_layer.down.weight"])
    assert applied.skipped_keys == {"x": 0}


def test_loha_plain_and_tucker(sd1, tmp_path):
    q = KOHYA[TO_Q]
    plain = {f"{q}.hada_w1_a": rand(32, 4), f"{q}.hada_w1_b": rand(4, 32), f"{q}.hada_w2_a": rand(32, 4),
             f"{q}.hada_w2_b": rand(4, 32), f"{q}.alpha": torch.tensor(2.0)}
    c = KOHYA[CONV1]
    cp = {f"{c}.hada_w1_a": rand(3, 32), f"{c}.hada_w1_b": rand(3, 32), f"{c}.hada_t1": rand(3, 3, 3, 3),
          f"{c}.hada_w2_a": rand(3, 32), f"{c}.hada_w2_b": rand(3, 32), f"{c}.hada_t2": rand(3, 3, 3, 3)}
    path = write(tmp_path, "loha.safetensors", plain | cp)
    before = {m: weight(sd1, m) for m in (TO_Q, CONV1)}
    got = patched_weights(apply(sd1, path, unet=0.9), TO_Q, CONV1)
    delta = (plain[f"{q}.hada_w1_a"] @ plain[f"{q}.hada_w1_b"]) * (plain[f"{q}.hada_w2_a"] @ plain[f"{q}.hada_w2_b"])
    close(got[TO_Q], before[TO_Q] + 0.9 * (2.0 / 4) * delta)

    def rebuild(t, wa, wb):  # W[o, i, k, l] = Σ_ab t[a, b, k, l] wa[a, o] wb[b, i]
        return torch.einsum("abkl,ao,bi->oikl", t, wa, wb)

    delta = rebuild(cp[f"{c}.hada_t1"], cp[f"{c}.hada_w1_a"], cp[f"{c}.hada_w1_b"]) * \
        rebuild(cp[f"{c}.hada_t2"], cp[f"{c}.hada_w2_a"], cp[f"{c}.hada_w2_b"])
    close(got[CONV1], before[CONV1] + 0.9 * delta)


def test_lokr_full_factored_and_conv_tucker(sd1, tmp_path):
    q, k2, c = KOHYA[TO_Q], KOHYA[TO_K2], KOHYA[CONV1]
    full = {f"{q}.lokr_w1": rand(4, 4), f"{q}.lokr_w2": rand(8, 8)}  # kron → 32×32
    factored = {f"{k2}.lokr_w1_a": rand(4, 2), f"{k2}.lokr_w1_b": rand(2, 8), f"{k2}.lokr_w2_a": rand(8, 2),
                f"{k2}.lokr_w2_b": rand(2, 8), f"{k2}.alpha": torch.tensor(1.0)}  # 32×64
    conv = {f"{c}.lokr_w1": rand(4, 4), f"{c}.lokr_w2_a": rand(2, 8), f"{c}.lokr_w2_b": rand(2, 8),
            f"{c}.lokr_t2": rand(2, 2, 3, 3), f"{c}.alpha": torch.tensor(4.0)}  # 32×32×3×3
    path = write(tmp_path, "lokr.safetensors", full | factored | conv)
    before = {m: weight(sd1, m) for m in (TO_Q, TO_K2, CONV1)}
    got = patched_weights(apply(sd1, path), TO_Q, TO_K2, CONV1)
    close(got[TO_Q], before[TO_Q] + torch.kron(full[f"{q}.lokr_w1"], full[f"{q}.lokr_w2"]))
    w1 = factored[f"{k2}.lokr_w1_a"] @ factored[f"{k2}.lokr_w1_b"]
    w2 = factored[f"{k2}.lokr_w2_a"] @ factored[f"{k2}.lokr_w2_b"]
    close(got[TO_K2], before[TO_K2] + (1.0 / 2) * torch.kron(w1, w2))
    w2 = torch.einsum("abkl,ao,bi->oikl", conv[f"{c}.lokr_t2"], conv[f"{c}.lokr_w2_a"], conv[f"{c}.lokr_w2_b"])
    expected = torch.kron(conv[f"{c}.lokr_w1"][:, :, None, None], w2.contiguous())
    close(got[CONV1], before[CONV1] + (4.0 / 2) * expected)


def test_ia3_full_diff_and_norm(sd1, tmp_path):
    q, k2, ff, n = KOHYA[TO_Q], KOHYA[TO_K2], KOHYA[OUT_FF], KOHYA[NORM1]
    tensors = {
        f"{q}.weight": rand(32), f"{q}.on_input": torch.tensor(False),
        f"{k2}.weight": rand(64), f"{k2}.on_input": torch.tensor(True),
        f"{ff}.diff": rand(32, 128), f"{ff}.diff_b": rand(32),
        f"{n}.w_norm": rand(32), f"{n}.b_norm": rand(32),
    }
    path = write(tmp_path, "lyco.safetensors", tensors)
    before = {m: weight(sd1, m) for m in (TO_Q, TO_K2, OUT_FF, NORM1)}
    biases = {m: module_of(sd1, m).bias.detach().clone() for m in (OUT_FF, NORM1)}
    applied = apply(sd1, path, unet=0.5)
    got = patched_weights(applied, TO_Q, TO_K2, OUT_FF, NORM1)
    got_bias = patched_weights(applied, OUT_FF, NORM1, suffix=".bias")
    close(got[TO_Q], before[TO_Q] * (1 + 0.5 * tensors[f"{q}.weight"][:, None]))
    close(got[TO_K2], before[TO_K2] * (1 + 0.5 * tensors[f"{k2}.weight"][None, :]))
    close(got[OUT_FF], before[OUT_FF] + 0.5 * tensors[f"{ff}.diff"])
    close(got_bias[OUT_FF], biases[OUT_FF] + 0.5 * tensors[f"{ff}.diff_b"])
    close(got[NORM1], before[NORM1] + 0.5 * tensors[f"{n}.w_norm"])
    close(got_bias[NORM1], biases[NORM1] + 0.5 * tensors[f"{n}.b_norm"])


def test_dora_on_input_and_output_axis(sd1, tmp_path):
    q, k2 = KOHYA[TO_Q], KOHYA[TO_K2]
    tensors = _lora_tensors(q, 32, 32, 4, 2.0) | _lora_tensors(k2, 32, 64, 4, 4.0)
    tensors[f"{q}.dora_scale"] = rand(1, 32).abs() + 1.0  # kohya / A1111: one magnitude per input column
    tensors[f"{k2}.dora_scale"] = rand(32, 1).abs() + 1.0  # LyCORIS wd_on_out: one per output row
    path = write(tmp_path, "dora.safetensors", tensors)
    before = {m: weight(sd1, m) for m in (TO_Q, TO_K2)}
    got = patched_weights(apply(sd1, path, unet=0.6), TO_Q, TO_K2)

    # A1111's apply_weight_decompose: normalise W + up@down (the raw product), then scale the change by
    # alpha / rank (here 2/4) and the strength.
    w = before[TO_Q]
    merged = w + tensors[f"{q}.lora_up.weight"] @ tensors[f"{q}.lora_down.weight"]
    column_norm = torch.sqrt((merged ** 2).sum(dim=0, keepdim=True))  # ‖·‖ over outputs, per input
    close(got[TO_Q], w + 0.6 * (2.0 / 4) * (tensors[f"{q}.dora_scale"] * merged / column_norm - w))
    w = before[TO_K2]
    merged = w + (4.0 / 4) * tensors[f"{k2}.lora_up.weight"] @ tensors[f"{k2}.lora_down.weight"]
    row_norm = torch.sqrt((merged ** 2).sum(dim=1, keepdim=True))
    close(got[TO_K2], w + 0.6 * (tensors[f"{k2}.dora_scale"] * merged / row_norm - w))


def test_dyn_uses_the_first_components(sd1, tmp_path):
    tensors = _lora_tensors(KOHYA[TO_Q], 32, 32, 8, 8.0)
    path = write(tmp_path, "dyn.safetensors", tensors)
    before = weight(sd1, TO_Q)
    got = patched_weights(apply(sd1, path, dyn=3), TO_Q)[TO_Q]
    up, down = tensors[f"{KOHYA[TO_Q]}.lora_up.weight"], tensors[f"{KOHYA[TO_Q]}.lora_down.weight"]
    close(got, before + up[:, :3] @ down[:3])


def test_sdxl_te1_te2_and_unet(sdxl, tmp_path):
    attn = "input_blocks.3.1.transformer_blocks.0.attn2.to_v"  # 128-wide context → 64
    te_q = "text_model.encoder.layers.0.self_attn.q_proj"
    tensors = (_lora_tensors("lora_unet_" + attn.replace(".", "_"), 64, 128, 4, 2.0)
               | _lora_tensors("lora_te1_" + te_q.replace(".", "_"), 64, 64, 2, 2.0)
               | _lora_tensors("lora_te2_" + te_q.replace(".", "_"), 64, 64, 4, 1.0))
    path = write(tmp_path, "xl.safetensors", tensors)
    assert lora_family(open_lora(path).tensors) == "sdxl"
    before = {"unet": sdxl.unet.model.get_submodule(attn).weight.detach().clone(),
              0: sdxl.text.units[0].model.get_submodule(te_q).weight.detach().clone(),
              1: sdxl.text.units[1].model.get_submodule(te_q).weight.detach().clone()}
    applied = apply(sdxl, path, te=0.25, unet=1.5)
    t = lambda stem, p: tensors[f"{stem}.{p}.weight"]  # noqa: E731
    stem = "lora_unet_" + attn.replace(".", "_")
    close(patched_weights(applied, attn)[attn], before["unet"] + 1.5 * 0.5 * t(stem, "lora_up") @ t(stem, "lora_down"))
    for part, prefix, scale in ((0, "lora_te1_", 1.0), (1, "lora_te2_", 0.25)):
        stem = prefix + te_q.replace(".", "_")
        got = patched_weights(applied, te_q, part=part)[te_q]
        close(got, before[part] + 0.25 * scale * t(stem, "lora_up") @ t(stem, "lora_down"))
    assert applied.skipped_keys == {"x": 0}


# ---- stacking, restore, reports, families ---------------------------------------------------------------

def test_stacking_is_additive_and_unpatch_is_bit_exact(sd1, tmp_path):
    a = _lora_tensors(KOHYA[TO_Q], 32, 32, 4, 4.0)
    b = _lora_tensors(KOHYA[TO_Q], 32, 32, 2, 2.0) | _lora_tensors(KOHYA[TE_Q], 64, 64, 2, 2.0)
    pa, pb = write(tmp_path, "a.safetensors", a), write(tmp_path, "b.safetensors", b)
    keymap = KeyMap(sd1.unet.model, [u.model for u in sd1.text.units])
    state = {k: v.clone() for k, v in sd1.unet.model.state_dict().items()}
    te_state = {k: v.clone() for k, v in sd1.text.units[0].model.state_dict().items()}
    applied = apply_loras(sd1, [(LoraRef("a", 1.0, 0.5), open_lora(pa, "a")), (LoraRef("b", 1.0, 2.0), open_lora(pb, "b"))], keymap)
    got = patched_weights(applied, TO_Q)[TO_Q]
    da = a[f"{KOHYA[TO_Q]}.lora_up.weight"] @ a[f"{KOHYA[TO_Q]}.lora_down.weight"]
    db = b[f"{KOHYA[TO_Q]}.lora_up.weight"] @ b[f"{KOHYA[TO_Q]}.lora_down.weight"]
    close(got, state[TO_Q + ".weight"] + 0.5 * da + 2.0 * db)
    assert applied.skipped_keys == {"a": 0, "b": 0}
    for k, v in sd1.unet.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for k, v in sd1.text.units[0].model.state_dict().items():
        assert torch.equal(v, te_state[k]), k


def test_unmatched_keys_are_counted(sd1, tmp_path):
    tensors = _lora_tensors(KOHYA[TO_Q], 32, 32, 4, 4.0)
    tensors |= _lora_tensors("lora_unet_down_blocks_7_attentions_0_proj_in", 32, 32, 2, 2.0)  # no such block
    tensors |= _lora_tensors(KOHYA[TO_K2], 32, 99, 2, 2.0)  # wrong width for this model
    tensors["lora_unet_something.weird_part"] = rand(3)
    path = write(tmp_path, "partial.safetensors", tensors)
    applied = apply(sd1, path, name="partial")
    assert applied.skipped_keys == {"partial": 7}
    assert applied.modules == {"partial": 1}


def test_family_detection_and_refusal(sd1, sdxl, tmp_path):
    from modules.lora import family_mismatch

    sd15 = _lora_tensors("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, 4, 4.0)
    sd15 |= _lora_tensors("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768, 4, 4.0)
    sd2 = _lora_tensors("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 1024, 1024, 4, 4.0)
    xl_unet_only = _lora_tensors("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 640, 2048, 4, 4.0)
    files = {name: open_lora(write(tmp_path, f"{name}.safetensors", t))
             for name, t in (("sd15", sd15), ("sd2", sd2), ("xl", xl_unet_only))}
    assert lora_family(files["sd15"].tensors) == "sd1"
    assert lora_family(files["sd2"].tensors) == "sd2"
    assert lora_family(files["xl"].tensors) == "sdxl"
    meta = open_lora(write(tmp_path, "m.safetensors", _lora_tensors(KOHYA[TO_Q], 32, 32, 4, 4.0),
                           {"ss_base_model_version": "sdxl_base_v1-0"}))
    assert lora_family(meta.tensors, meta.metadata) == "sdxl"
    assert family_mismatch(files["sd15"], sdxl.family) == "LoRA 'sd15' was made for SD1, the model is SDXL"
    assert family_mismatch(files["xl"], sd1.family) == "LoRA 'xl' was made for SDXL, the model is SD1"
    assert family_mismatch(files["sd15"], sd1.family) is None
