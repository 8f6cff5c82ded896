"""ModelPatcher: patches are applied for a block and undone bit-exactly; clones never touch parents."""
import torch
from torch import nn

from modules.patcher import DeltaPatch, ModelPatcher


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).to(torch.bfloat16)


def test_apply_then_restore_is_bit_exact():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = ModelPatcher(model).clone()
    up, down = torch.randn(3, 1), torch.randn(1, 4)
    p.add_weight_patches({"0.weight": DeltaPatch(lambda w: up @ down, 0.5)})
    with p.applied() as m:
        expected = (before["0.weight"].float() + 0.5 * (up @ down)).to(torch.bfloat16)
        assert torch.equal(m.state_dict()["0.weight"], expected)
        assert torch.equal(m.state_dict()["1.weight"], before["1.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_clone_does_not_change_parent_patch_list():
    base = ModelPatcher(_model())
    child = base.clone()
    used = child.add_weight_patches({"0.weight": DeltaPatch(lambda w: torch.ones_like(w)), "nope.weight": DeltaPatch(lambda w: w)})
    assert used == {"0.weight"}
    assert base.weight_patches == {} and list(child.weight_patches) == ["0.weight"]


def test_stacked_patches_add_up():
    model = _model()
    w0 = model[0].weight.detach().float().clone()
    p = ModelPatcher(model)
    p.add_weight_patches({"0.weight": DeltaPatch(lambda w: torch.full_like(w, 0.25))})
    p.add_weight_patches({"0.weight": DeltaPatch(lambda w: torch.full_like(w, 0.5), strength=2.0)})
    with p.applied() as m:
        assert torch.allclose(m[0].weight.float(), (w0 + 1.25).to(torch.bfloat16).float())


def test_switching_between_clones_restores_the_first():
    model = _model()
    w0 = model[0].weight.detach().clone()
    a, b = ModelPatcher(model).clone(), ModelPatcher(model).clone()
    b._state = a._state  # clones of one base share state
    a.add_weight_patches({"0.weight": DeltaPatch(lambda w: torch.ones_like(w))})
    a.patch_model()
    assert not torch.equal(model[0].weight, w0)
    b.patch_model()  # b has no patches: a's must be undone
    assert torch.equal(model[0].weight, w0)
