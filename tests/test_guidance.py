"""Classifier-free guidance and the eps / v adapters against their formulas, with a fake network."""
import torch

from modules.conditioning import EncodedPlan, stack_cross_attn
from modules.guidance import GuidedDenoiser, NetworkAdapter
from modules.prompts import plan_conditioning
from modules.types import Conditioning


class FakeUNet(torch.nn.Module):
    """output = x_in · mean(context) + t/1000, so every input visibly matters; counts calls and batches."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, context, y=None, control=None):
        self.calls.append(x.shape[0])
        return x * context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + (t / 1000).view(-1, 1, 1, 1)


def _cond(value, tokens=77):
    return Conditioning(cross_attn=torch.full((1, tokens, 8), float(value)))


def _plan(prompts, conds, negative=False):
    return EncodedPlan(plan_conditioning(prompts, 10, multicond=not negative), tuple(conds))


def _network(unet, prediction="eps"):
    return NetworkAdapter(unet, lambda s: s * 10, prediction)


def test_eps_and_v_adapters_match_their_formulas():
    x, sigma = torch.randn(1, 4, 2, 2), torch.tensor([2.0])
    unet = FakeUNet()
    ctx = torch.full((1, 3, 8), 0.5)
    c_in = 1 / (sigma**2 + 1) ** 0.5
    raw = x * c_in * 0.5 + sigma * 10 / 1000
    assert torch.allclose(_network(unet)(x, sigma, ctx, None), x - raw * sigma, atol=1e-6)
    v = _network(unet, "v")(x, sigma, ctx, None)
    assert torch.allclose(v, x / (sigma**2 + 1) - raw * sigma / (sigma**2 + 1) ** 0.5, atol=1e-6)


def test_cfg_formula_and_single_batched_call():
    unet = FakeUNet()
    den = GuidedDenoiser(_network(unet), _plan(["a"], [_cond(1.0)]), _plan([""], [_cond(0.2)], True), 7.5)
    x, sigma = torch.randn(2, 4, 2, 2), torch.tensor([3.0])
    out = den(x, sigma)
    net = _network(FakeUNet())
    c = net(x, sigma.expand(2), _cond(1.0).cross_attn.expand(2, -1, -1), None)
    u = net(x, sigma.expand(2), _cond(0.2).cross_attn.expand(2, -1, -1), None)
    assert torch.allclose(out, u + 7.5 * (c - u), atol=1e-5)
    assert unet.calls == [4]  # cond and uncond for two images in one batch


def test_cfg_one_skips_the_unconditional_pass():
    unet = FakeUNet()
    den = GuidedDenoiser(_network(unet), _plan(["a"], [_cond(1.0)]), _plan([""], [_cond(0.2)], True), 1.0)
    x = torch.randn(1, 4, 2, 2)
    out = den(x, torch.tensor([1.0]))
    assert unet.calls == [1]
    assert torch.allclose(out, _network(FakeUNet())(x, torch.tensor([1.0]), _cond(1.0).cross_attn, None))


def test_different_token_counts_run_as_two_calls():
    unet = FakeUNet()
    den = GuidedDenoiser(_network(unet), _plan(["a"], [_cond(1.0, 154)]), _plan([""], [_cond(0.2)], True), 5.0)
    den(torch.randn(1, 4, 2, 2), torch.tensor([1.0]))
    assert unet.calls == [1, 1]


def test_and_weights_are_composable_diffusion():
    unet = FakeUNet()
    pos = _plan(["a AND b :0.5"], [_cond(1.0), _cond(3.0)])
    den = GuidedDenoiser(_network(unet), pos, _plan([""], [_cond(0.0)], True), 4.0)
    x, sigma = torch.randn(1, 4, 2, 2), torch.tensor([1.5])
    out = den(x, sigma)
    net = _network(FakeUNet())
    a, b, u = (net(x, sigma, _cond(v).cross_attn, None) for v in (1.0, 3.0, 0.0))
    assert torch.allclose(out, u + 4.0 * (1.0 * (a - u) + 0.5 * (b - u)), atol=1e-5)


def test_prompt_editing_switches_conditioning_by_denoiser_call():
    unet = FakeUNet()
    pos = _plan(["[cat:dog:3]"], [_cond(1.0), _cond(2.0)])
    assert pos.plan.texts == ("cat", "dog")
    den = GuidedDenoiser(_network(unet), pos, _plan([""], [_cond(0.0)], True), 1.0)
    x = torch.ones(1, 4, 1, 1)
    outs = [den(x, torch.tensor([1.0]))[0, 0, 0, 0].item() for _ in range(6)]
    assert outs[0] == outs[3] != outs[4] == outs[5]  # A1111: "cat" through step 3, "dog" from 4


def test_stack_cross_attn_repeats_the_last_vector():
    a = torch.arange(6.0).view(1, 3, 2)
    b = torch.ones(1, 1, 2)
    out = stack_cross_attn([a, b])
    assert out.shape == (2, 3, 2) and torch.equal(out[1], torch.ones(3, 2))
