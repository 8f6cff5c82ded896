"""Score a demo model the way tests/test_demo_model.py does, and print every number docs/demo-model.md
reports (the test only says pass or fail).

    .venv/bin/python tools/score_demo_model.py                     # the shipped model, 20 seeds a prompt
    .venv/bin/python tools/score_demo_model.py /tmp/run/snap.safetensors --seeds 4   # a quick look
    .venv/bin/python tools/score_demo_model.py --cfg 3 --cfg 5 --cfg 7             # chosen CFG scales

Pictures come from the real Engine (256x256, 20 steps, Euler a; by default at the CFG scale the file
suggests, `palette.default_cfg_scale`, and at A1111's 7) and are measured by `demo_data.measure`:
colour, background, position, and the shape (`demo_data.classify_shape`, on `demo_data.SHAPE_PROMPTS`,
which differ only in the shape word). Also reported: where the UNet puts the shape at the sampler's
first step (the brightness centroid of its x0 prediction from pure noise, per position word), which
tells whether it reads position words at all before the sampler has committed to a layout.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "tools"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import demo_data  # noqa: E402
import train_demo_model  # noqa: E402

DEFAULT_MODEL = train_demo_model.DEFAULT_OUT


def fully_right(prompt: tuple[str, str, str, str], m: demo_data.Measure) -> bool:
    color, _shape, background, position = prompt
    return m.shape_color == color and m.background == background and m.position() == position


def first_step_layout(model: Path, samples: int = 8) -> dict[str, tuple[float, float]]:
    """Position word → (x, y) brightness centroid of the UNet's x0 prediction at t = 999 from pure noise
    (what the sampler's first step sees), for "a yellow circle on a black background, <position>".
    A model that reads position words moves the centroid towards demo_data.POSITIONS[word]."""
    import dataclasses
    import json

    import torch

    recorded = json.loads(train_demo_model.training_metadata(model))["recipe"]
    known = {f.name for f in dataclasses.fields(train_demo_model.Recipe)}
    recipe = train_demo_model.Recipe(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in recorded.items() if k in known})
    unet, vae, text = train_demo_model.build_networks(recipe)
    train_demo_model.load_demo_file(model, unet, vae, text, torch.device("cpu"))
    unet.eval(), vae.eval(), text.eval()
    ids = train_demo_model.TextIds()
    a = train_demo_model.sd_alphas_cumprod()[999]
    noise = torch.randn(samples, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    xt = (1 - a).sqrt() * noise
    grid = torch.linspace(0, 1, train_demo_model.RESOLUTION)
    out = {}
    with torch.no_grad():
        for word in demo_data.POSITIONS:
            prompt = demo_data.prompt_for("yellow", "circle", "black", word)
            context = train_demo_model.encode_text(text, ids([prompt] * samples))
            v = unet(xt, torch.full((samples,), 999.0), context)
            x0 = a.sqrt() * xt - (1 - a).sqrt() * v
            luminance = vae.decode(x0 / train_demo_model.SD1_LATENT_SCALE).clamp(-1, 1).mean(1)
            weight = (luminance - luminance.mean(dim=(1, 2), keepdim=True)).clamp(min=0)
            total = weight.sum(dim=(1, 2))
            cx = ((weight * grid[None, None, :]).sum(dim=(1, 2)) / total).mean().item()
            cy = ((weight * grid[None, :, None]).sum(dim=(1, 2)) / total).mean().item()
            out[word] = (cx, cy)
    return out


def suggested_cfg(model: Path) -> float | None:
    """The CFG scale the file asks the UI for (`palette.default_cfg_scale`), or None."""
    from modules.types import CheckpointHints

    return CheckpointHints.from_file(model).cfg_scale


def score(model: Path, seeds: int, cfgs: list[float]) -> None:
    """Every criterion of tests/test_demo_model.py at each CFG scale of `cfgs`, with the numbers behind it."""
    engine = train_demo_model.make_engine(model)

    def measures(prompt: str, *, seed: int = 1, **kwargs) -> list[demo_data.Measure]:
        images = train_demo_model.generate(engine, prompt, list(range(seed, seed + seeds)), **kwargs)
        return [demo_data.measure(im) for im in images]

    started = time.time()
    print(f"model {model} ({seeds} seeds a prompt; the file suggests CFG {suggested_cfg(model)})")
    low = None
    for cfg in cfgs:
        grid = {p: measures(demo_data.prompt_for(*p), cfg=cfg) for p in demo_data.SCORE_PROMPTS}
        n = len(grid) * seeds
        both = {p: sum(m.shape_color == p[0] and m.background == p[2] for m in ms) for p, ms in grid.items()}
        print(f"== CFG {cfg:g}")
        print(f"colour + background right: {sum(both.values()) / n:.1%}")
        for p, hits in both.items():
            got = ", ".join(f"{m.shape_color}/{m.background}" for m in grid[p][:4])
            print(f"  {p[0]} {p[1]} on {p[2]}: {hits}/{seeds} (first: {got})")
        print(f"background alone: {sum(m.background == p[2] for p, ms in grid.items() for m in ms) / n:.1%}, "
              f"shape colour alone: {sum(m.shape_color == p[0] for p, ms in grid.items() for m in ms) / n:.1%}")
        pos = {p[3]: sum(m.position() == p[3] for m in ms) for p, ms in grid.items()}
        print(f"position right: {sum(pos.values()) / n:.1%} {pos}")
        print(f"fully right (colour, background, position): {sum(fully_right(p, m) for p, ms in grid.items() for m in ms) / n:.1%}")
        if low is None:
            low = {p: measures(demo_data.prompt_for(*p), cfg=1.5) for p in demo_data.SCORE_PROMPTS[:4]}
        high = {p: grid[p] for p in low}
        print(f"CFG {cfg:g} vs 1.5 (first 4 prompts, {4 * seeds} pictures each): fully right "
              f"{fully_right_count(high)} vs {fully_right_count(low)}; prompted colour's share "
              f"{prompted_share(high):.3f} vs {prompted_share(low):.3f}")
        shapes = {p: measures(demo_data.prompt_for(*p), cfg=cfg) for p in demo_data.SHAPE_PROMPTS}
        print(f"shape right: {shape_rate(shapes):.1%} (chance 20%; {len(shapes)} prompts that differ only in "
              f"the shape word); drawn as:")
        for shape in demo_data.SHAPES:
            drawn = collections.Counter(m.shape for p, ms in shapes.items() if p[1] == shape for m in ms)
            print(f"  {shape:8s} " + ", ".join(f"{k} {v}" for k, v in drawn.most_common()))
        prompt = "a red circle on a white background"
        plain = statistics.mean(m.shares["red"] for m in measures(prompt, seed=100, cfg=cfg))
        steered = statistics.mean(m.shares["red"] for m in measures(prompt, seed=100, negative="red", cfg=cfg))
        print(f"negative prompt 'red' on '{prompt}': red share {plain:.3f} -> {steered:.3f} "
              f"({(steered - plain) / plain:+.0%})")
    layout = first_step_layout(model)
    print("first step (x0 from pure noise, t = 999), centroid per position word:")
    for word, (x, y) in layout.items():
        want = demo_data.POSITIONS[word]
        print(f"  {word:13s} ({x:.2f}, {y:.2f})  drawn at ({want[0]:.2f}, {want[1]:.2f})")
    print(f"({time.time() - started:.0f} s)")


def shape_rate(results: dict[tuple[str, str, str, str], list[demo_data.Measure]]) -> float:
    """Share of pictures whose region classify_shape names the prompted shape."""
    pictures = [(p, m) for p, ms in results.items() for m in ms]
    return sum(m.shape == p[1] for p, m in pictures) / len(pictures)


def fully_right_count(results: dict[tuple[str, str, str, str], list[demo_data.Measure]]) -> int:
    return sum(fully_right(p, m) for p, ms in results.items() for m in ms)


def prompted_share(results: dict[tuple[str, str, str, str], list[demo_data.Measure]]) -> float:
    """Mean share of the picture in the prompt's shape colour: how hard the prompt pulls."""
    return statistics.mean(m.shares[p[0]] for p, ms in results.items() for m in ms)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, nargs="?", default=DEFAULT_MODEL)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--cfg", type=float, action="append",
                    help="CFG scale to score at (repeatable); default: the file's suggested CFG, and A1111's 7")
    args = ap.parse_args(argv)
    model = args.model.resolve()
    cfgs = args.cfg or sorted({suggested_cfg(model) or 7.0, 7.0})
    score(model, args.seeds, cfgs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
