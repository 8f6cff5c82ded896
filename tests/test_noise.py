"""Seeded noise: A1111's CPU RNG behaviour (seeds, batches, subseeds, resize seed, ENSD) and Brownian trees."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.sampling.noise import (
    BrownianTreeNoiseSampler, ImageRNG, RNGNoiseSampler, ancestral_step, create_noise, default_noise_sampler,
    random_seed,
)

SHAPE = (4, 64, 64)


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_noise_is_torch_cpu_randn_of_the_seed():
    noise = create_noise(SHAPE, [1234])
    assert noise.shape == (1, *SHAPE) and noise.dtype == torch.float32
    torch.testing.assert_close(noise[0], randn(SHAPE, 1234), rtol=0, atol=0)
    # the well-known first values of torch's CPU generator for seed 0 (what A1111's CPU source draws)
    first = create_noise((1, 1, 3), [0])[0, 0, 0]
    torch.testing.assert_close(first, torch.tensor([1.5410, -0.2934, -2.1788]), atol=1e-4, rtol=0)


def test_same_seed_same_noise_and_batch_position_is_irrelevant():
    torch.testing.assert_close(create_noise(SHAPE, [7]), create_noise(SHAPE, [7]), rtol=0, atol=0)
    batch = create_noise(SHAPE, [100, 101, 102])
    for i in range(3):
        torch.testing.assert_close(batch[i], create_noise(SHAPE, [100 + i])[0], rtol=0, atol=0)
    assert not torch.equal(batch[0], batch[1])


def test_next_continues_each_images_generator():
    rng = ImageRNG((4, 8, 8), [5, 6])
    first = rng.next()  # the first call is the starting noise (A1111's rng.next())
    second = rng.next()
    for i, seed in enumerate((5, 6)):
        g = torch.Generator().manual_seed(seed)
        torch.testing.assert_close(first[i], torch.randn((4, 8, 8), generator=g), rtol=0, atol=0)
        torch.testing.assert_close(second[i], torch.randn((4, 8, 8), generator=g), rtol=0, atol=0)
    # first() after next() returns the same starting noise and does not advance anything
    torch.testing.assert_close(rng.first(), first, rtol=0, atol=0)
    single = ImageRNG((4, 8, 8), [6])
    single.first()
    torch.testing.assert_close(single.next()[0], second[1], rtol=0, atol=0)


def test_eta_noise_seed_delta_reseeds_after_the_first_noise():
    rng = ImageRNG((4, 8, 8), [5], eta_noise_seed_delta=31337)
    torch.testing.assert_close(rng.first()[0], randn((4, 8, 8), 5), rtol=0, atol=0)
    torch.testing.assert_close(rng.next()[0], randn((4, 8, 8), 5 + 31337), rtol=0, atol=0)


def reference_slerp(t, low, high):
    """A1111's slerp written out per (channel, column) vector in float64."""
    low, high = low.double().numpy(), high.double().numpy()
    out = np.empty_like(low)
    dots = []
    for c in range(low.shape[0]):
        for w in range(low.shape[2]):
            a, b = low[c, :, w], high[c, :, w]
            dot = np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b))
            dots.append(dot)
            omega = np.arccos(dot)
            out[c, :, w] = np.sin((1 - t) * omega) / np.sin(omega) * a + np.sin(t * omega) / np.sin(omega) * b
    assert np.mean(dots) <= 0.9995
    return torch.from_numpy(out).float()


def test_subseed_strength():
    shape = (4, 16, 16)
    base, sub = randn(shape, 11), randn(shape, 22)
    same = ImageRNG(shape, [11], subseeds=[22], subseed_strength=0.0).first()[0]
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    full = ImageRNG(shape, [11], subseeds=[22], subseed_strength=1.0).first()[0]
    torch.testing.assert_close(full, sub, atol=1e-5, rtol=1e-5)
    half = ImageRNG(shape, [11], subseeds=[22], subseed_strength=0.3).first()[0]
    torch.testing.assert_close(half, reference_slerp(0.3, base, sub), atol=1e-5, rtol=1e-5)
    # missing subseeds count as 0, as in A1111
    batch = ImageRNG(shape, [11, 12], subseeds=[22], subseed_strength=0.3).first()
    torch.testing.assert_close(batch[1], reference_slerp(0.3, randn(shape, 12), randn(shape, 0)), atol=1e-5, rtol=1e-5)


def test_seed_resize_from_pastes_centred():
    seed = 77
    # from 64x128 px (8x16 latent) into a 16x24 latent: the small noise sits in the middle
    grown = ImageRNG((4, 16, 24), [seed], seed_resize_from=(64, 128)).first()[0]
    expected = randn((4, 16, 24), seed)
    expected[:, 4:12, 4:20] = randn((4, 8, 16), seed)
    torch.testing.assert_close(grown, expected, rtol=0, atol=0)
    # from 256x256 px (32x32 latent): the centre of the big noise fills everything
    shrunk = ImageRNG((4, 16, 24), [seed], seed_resize_from=(256, 256)).first()[0]
    torch.testing.assert_close(shrunk, randn((4, 32, 32), seed)[:, 8:24, 4:28], rtol=0, atol=0)
    # one side 0 means off
    off = ImageRNG((4, 16, 24), [seed], seed_resize_from=(0, 256)).first()[0]
    torch.testing.assert_close(off, randn((4, 16, 24), seed), rtol=0, atol=0)


def test_rng_noise_sampler_and_default_noise_sampler():
    rng = ImageRNG((1, 4, 4), [3])
    start = rng.first()
    like = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    ns = rng.noise_sampler(None, like)
    assert isinstance(ns, RNGNoiseSampler)
    g = torch.Generator().manual_seed(3)
    torch.randn((1, 4, 4), generator=g)
    step = ns(1.0, 0.5)
    assert step.dtype == torch.float64
    torch.testing.assert_close(step[0].float(), torch.randn((1, 4, 4), generator=g), rtol=0, atol=0)
    assert start.shape == (1, 1, 4, 4)
    a = default_noise_sampler(like, torch.Generator().manual_seed(9))
    b = default_noise_sampler(like, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a(1, 0), b(1, 0))


def test_random_seed_leaves_torch_rng_alone():
    state = torch.get_rng_state()
    seeds = {random_seed() for _ in range(20)}
    assert torch.equal(state, torch.get_rng_state())
    assert all(0 <= s < 4294967294 for s in seeds) and len(seeds) > 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        ImageRNG((4, 8, 8), [])
    with pytest.raises(ValueError, match="C, H, W"):
        ImageRNG((8, 8), [1])
    with pytest.raises(ValueError, match="batch"):
        ImageRNG((2, 4, 8, 8), [1])
    assert ImageRNG((2, 4, 8, 8), [1, 2]).first().shape == (2, 4, 8, 8)


def test_ancestral_step():
    down, up = ancestral_step(torch.tensor(2.0), torch.tensor(1.0))
    assert float(up) == pytest.approx((1 * (4 - 1) / 4) ** 0.5)
    assert float(down ** 2 + up ** 2) == pytest.approx(1.0)
    down, up = ancestral_step(torch.tensor(2.0), torch.tensor(1.0), eta=0.0)
    assert float(down) == 1.0 and float(up) == 0.0


# ---- Brownian tree ------------------------------------------------------------------------------------------

def test_brownian_tree_is_deterministic_per_seed_and_batch_independent():
    x = torch.zeros(2, 2, 4, 4)
    a = BrownianTreeNoiseSampler(x, 0.03, 14.6, [10, 20])
    b = BrownianTreeNoiseSampler(x, 0.03, 14.6, [10, 20])
    alone = BrownianTreeNoiseSampler(x[:1], 0.03, 14.6, [20])
    for s, s_next in ((14.6, 7.0), (7.0, 1.5), (1.5, 0.03)):
        na = a(torch.tensor(s), torch.tensor(s_next))
        torch.testing.assert_close(na, b(torch.tensor(s), torch.tensor(s_next)), rtol=0, atol=0)
        torch.testing.assert_close(na[1], alone(torch.tensor(s), torch.tensor(s_next))[0], rtol=0, atol=0)
        assert not torch.equal(na[0], na[1])
        assert na.shape == x.shape
    # increments over disjoint intervals add up to the increment over their union
    full = a(torch.tensor(14.6), torch.tensor(1.5)) * (14.6 - 1.5) ** 0.5
    parts = a(torch.tensor(14.6), torch.tensor(7.0)) * (14.6 - 7.0) ** 0.5 + a(torch.tensor(7.0), torch.tensor(1.5)) * 5.5 ** 0.5
    torch.testing.assert_close(full, parts, atol=1e-4, rtol=1e-4)


def test_brownian_noise_is_unit_variance():
    x = torch.zeros(1, 4, 32, 32)
    sampler = BrownianTreeNoiseSampler(x, 0.03, 14.6, [5])
    noise = sampler(torch.tensor(3.0), torch.tensor(2.0))
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.1


def test_image_rng_picks_brownian_for_brownian_samplers():
    class Info:
        brownian_noise = True

    x = torch.zeros(2, 1, 4, 4)
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    rng = ImageRNG((1, 4, 4), [1, 2])
    ns = rng.noise_sampler(Info(), x, sigmas)
    assert isinstance(ns, BrownianTreeNoiseSampler)
    ref = BrownianTreeNoiseSampler(x, 1.0, 10.0, [1, 2])
    torch.testing.assert_close(ns(torch.tensor(5.0), torch.tensor(1.0)), ref(torch.tensor(5.0), torch.tensor(1.0)))
    wide = rng.noise_sampler(Info(), x, sigmas, tree_sigmas=torch.tensor([14.6, 5.0, 0.03, 0.0]))
    ref_wide = BrownianTreeNoiseSampler(x, 0.03, 14.6, [1, 2])
    torch.testing.assert_close(wide(torch.tensor(5.0), torch.tensor(1.0)), ref_wide(torch.tensor(5.0), torch.tensor(1.0)))
    with pytest.raises(ValueError, match="one seed per image"):
        BrownianTreeNoiseSampler(x, 1.0, 10.0, [1])
