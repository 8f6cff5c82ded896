"""Seeded noise, identical to A1111 with "Random number generator source: CPU".

- `ImageRNG` (A1111's `modules/rng.py`): one CPU `torch.Generator` per image, seeded with that image's
  seed. `first()` is the starting noise: `randn((C, H, W))` from the image's generator, optionally
  slerped towards the subseed's noise (variation seed) and, with "resize seed from", drawn at the other
  size and pasted centred into noise of the target size. `next()` continues every image's generator,
  which is where A1111's ancestral samplers take their per-step noise. Because each image owns its
  generator, image i of a batch equals the same seed generated alone.
- `BrownianTreeNoiseSampler`: one torchsde Brownian tree per image seed (k-diffusion; used by the
  DPM++ SDE family so their noise does not depend on step count order or batch position).
- `noise_sampler(sigma, sigma_next) -> Tensor` is the interface samplers call; nothing here touches the
  global torch RNG.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

NoiseSampler = Callable[[Any, Any], Tensor]


class _SamplerLike(Protocol):
    brownian_noise: bool


def random_seed() -> int:
    """A fresh seed for seed == -1, in A1111's range [0, 4294967294), from the OS entropy source."""
    return random.SystemRandom().randrange(4294967294)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def randn(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Standard normal float32 noise on the CPU from `generator`."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def slerp(val: float, low: Tensor, high: Tensor) -> Tensor:
    """A1111's spherical interpolation for variation seeds, kept formula-for-formula for reproducibility
    (Shoemake 1985, "Animating rotation with quaternion curves"). On a (C, H, W) tensor A1111 normalises
    along dim 1, so every (channel, column) vector is interpolated separately; when the inputs are nearly
    parallel it falls back to `low * val + high * (1 - val)` (weights as A1111 has them)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _paste_centred(target: Tensor, source: Tensor) -> Tensor:
    """Copy the centre of `source` (C, h, w) over the centre of `target` (C, H, W), as A1111 does."""
    dx = (target.shape[2] - source.shape[2]) // 2
    dy = (target.shape[1] - source.shape[1]) // 2
    w = source.shape[2] if dx >= 0 else source.shape[2] + 2 * dx
    h = source.shape[1] if dy >= 0 else source.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    target[:, ty:ty + h, tx:tx + w] = source[:, sy:sy + h, sx:sx + w]
    return target


class ImageRNG:
    """Per-image seeded noise (A1111 `ImageRNG`, CPU source).

    shape: (C, H, W) of one latent; seeds / subseeds: one per image (missing subseeds count as 0, as
    A1111); seed_resize_from: (height, width) in pixels, 0 = off; `latent_factor` converts it to latent
    size. eta_noise_seed_delta (A1111's ENSD): after the first noise, every generator is re-seeded with
    seed + delta. Tensors are returned on `device` (default CPU) as float32.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from: tuple[int, int] = (0, 0),
        *,
        eta_noise_seed_delta: int = 0,
        latent_factor: int = 8,
        device: torch.device | str | None = None,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) == 4:
            if shape[0] != len(seeds):
                raise ValueError(f"noise shape {shape} has batch {shape[0]} but {len(seeds)} seeds were given")
            shape = shape[1:]
        if len(shape) != 3:
            raise ValueError(f"noise shape must be (C, H, W), got {shape}")
        if not seeds:
            raise ValueError("ImageRNG needs at least one seed")
        self.shape = shape
        self.seeds = [int(s) for s in seeds]
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = (int(seed_resize_from[0]), int(seed_resize_from[1]))
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.latent_factor = latent_factor
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generators = [cpu_generator(s) for s in self.seeds]
        self._first: Tensor | None = None

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """The shape the seed's noise is drawn at (differs from `shape` with "resize seed from")."""
        h, w = self.seed_resize_from
        if h <= 0 or w <= 0:
            return self.shape
        return (self.shape[0], h // self.latent_factor, w // self.latent_factor)

    def first(self) -> Tensor:
        """The starting noise [B, C, H, W]. Computed once; later calls return the same tensor."""
        if self._first is not None:
            return self._first.clone().to(self.device)
        noise_shape = self.noise_shape
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = randn(noise_shape, cpu_generator(subseed))
            if noise_shape != self.shape:
                noise = randn(noise_shape, cpu_generator(seed))
            else:
                noise = randn(self.shape, generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = _paste_centred(randn(self.shape, generator), noise)
            xs.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [cpu_generator(s + self.eta_noise_seed_delta) for s in self.seeds]
        self._first = torch.stack(xs)
        return self._first.clone().to(self.device)

    def next(self) -> Tensor:
        """The first noise on the first call, then the next draw of every image's generator."""
        if self._first is None:
            return self.first()
        return torch.stack([randn(self.shape, g) for g in self.generators]).to(self.device)

    def noise_sampler(
        self,
        sampler: _SamplerLike | None = None,
        x: Tensor | None = None,
        sigmas: Tensor | None = None,
        seeds: Sequence[int] | None = None,
        *,
        tree_sigmas: Tensor | None = None,
    ) -> NoiseSampler:
        """The sampler's per-step noise source, as A1111 picks it.

        Brownian-noise samplers (DPM++ SDE family) get a `BrownianTreeNoiseSampler` over
        [min positive sigma, max sigma] of `tree_sigmas` (A1111 passes the *full* schedule, also for
        img2img) or else of `sigmas`, one tree per seed. Every other sampler draws `next()`."""
        if sampler is not None and getattr(sampler, "brownian_noise", False):
            if x is None or (sigmas is None and tree_sigmas is None):
                raise ValueError("a Brownian-noise sampler needs x and sigmas to build its noise tree")
            span = tree_sigmas if tree_sigmas is not None else sigmas
            positive = span[span > 0]
            return BrownianTreeNoiseSampler(x, positive.min(), span.max(), list(seeds or self.seeds))
        return RNGNoiseSampler(self, like=x)


class RNGNoiseSampler:
    """`noise_sampler(sigma, sigma_next)` that returns `rng.next()` (A1111's hijacked `randn_like`)."""

    def __init__(self, rng: ImageRNG, like: Tensor | None = None) -> None:
        self.rng = rng
        self.like = like

    def __call__(self, sigma: Any = None, sigma_next: Any = None) -> Tensor:
        noise = self.rng.next()
        if self.like is not None:
            noise = noise.to(self.like.device, self.like.dtype)
        return noise


def create_noise(
    shape: Sequence[int],
    seeds: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from: tuple[int, int] = (0, 0),
) -> Tensor:
    """A1111's starting noise for a batch: `ImageRNG(...).first()` ([B, C, H, W], float32, CPU)."""
    return ImageRNG(shape, seeds, subseeds, subseed_strength, seed_resize_from).first()


def default_noise_sampler(x: Tensor, generator: torch.Generator) -> NoiseSampler:
    """Noise like `x` drawn from an explicit generator (on the generator's device, then moved to x's)."""

    def sample(sigma: Any = None, sigma_next: Any = None) -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)

    return sample


def missing_noise_sampler(sampler_name: str) -> NoiseSampler:
    """Stands in when a stochastic sampler got no noise source: fails, clearly, only if noise is needed."""

    def fail(sigma: Any = None, sigma_next: Any = None) -> Tensor:
        raise ValueError(
            f"{sampler_name} adds noise while sampling, so it needs noise_sampler=...: e.g. "
            "ImageRNG(shape, seeds).noise_sampler(info, x, sigmas) or "
            "default_noise_sampler(x, torch.Generator().manual_seed(seed)); the global RNG is never used"
        )

    return fail


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step sigma_from → sigma_to into a deterministic move to sigma_down plus fresh noise of
    std sigma_up, sigma_down^2 + sigma_up^2 = sigma_to^2 (ancestral sampling, Ho et al. 2020 / k-diffusion;
    eta scales the noise as in DDIM, Song et al. 2020, arXiv:2010.02502)."""
    sigma_from, sigma_to = torch.as_tensor(sigma_from), torch.as_tensor(sigma_to)
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


class BrownianTreeNoiseSampler:
    """Brownian-motion increments W(t_next) - W(t), normalised to unit variance, from one torchsde
    Brownian tree per image seed (Li et al. 2020, arXiv:2001.01328, "virtual Brownian tree";
    k-diffusion's sampler). `transform` maps sigma to the tree's time (identity in A1111).

    The trees live on the CPU so noise does not depend on the device (A1111 builds them on x's device)."""

    def __init__(
        self,
        x: Tensor,
        sigma_min: Any,
        sigma_max: Any,
        seeds: Sequence[int] | int,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        import torchsde  # deferred: only the SDE samplers need it

        self.transform = transform or (lambda s: s)
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        if len(seeds) != x.shape[0]:
            raise ValueError(f"BrownianTreeNoiseSampler needs one seed per image: {len(seeds)} seeds, batch {x.shape[0]}")
        t0 = self.transform(torch.as_tensor(sigma_min, dtype=torch.float32).cpu())
        t1 = self.transform(torch.as_tensor(sigma_max, dtype=torch.float32).cpu())
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w0 = torch.zeros(x.shape[1:], dtype=x.dtype, device="cpu")
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(s)) for s in seeds]
        # torchsde rounds its end points to 6 digits (tol 1e-6) and clamps queries with a warning;
        # clamp here the same way, silently
        self._lo, self._hi = round(float(t0), 6), round(float(t1), 6)
        self.device, self.dtype = x.device, x.dtype

    def __call__(self, sigma: Any, sigma_next: Any) -> Tensor:
        t0 = self.transform(torch.as_tensor(sigma, dtype=torch.float32).cpu())
        t1 = self.transform(torch.as_tensor(sigma_next, dtype=torch.float32).cpu())
        sign = 1 if t0 < t1 else -1
        lo, hi = (t0, t1) if t0 < t1 else (t1, t0)
        lo, hi = min(max(float(lo), self._lo), self._hi), min(max(float(hi), self._lo), self._hi)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.sign * sign)
        return (w / (t1 - t0).abs().sqrt()).to(self.device, self.dtype)
