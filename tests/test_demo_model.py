"""The shipped demo model (models/Stable-diffusion/palette-demo.safetensors) follows its prompts.

Pictures are generated through the real Engine and scored by a plain, deterministic measure
(tools/demo_data.measure): every pixel is assigned the nearest named colour; the background is the
border's dominant colour, the shape is the dominant other colour, and its centroid gives the position
(thirds of the picture). Criteria from the issue, at the CFG scale the file asks the UI for
(`palette.default_cfg_scale`, what a user of the UI gets): over 20 seeds per prompt, >= 80% of pictures
show the prompted colour on the prompted background and >= 60% put the shape in the prompted position;
prompts that differ only in the shape word draw that shape (demo_data.classify_shape, a template fit);
a negative prompt naming the prompted colour lowers that colour's share; a higher CFG scale follows the
prompt more strictly (from CFG 1.5 up to the suggested scale the prompted colour takes more of the
picture, and as many pictures stay fully right); a 256x256 picture at 20 steps takes under 2 s on the CPU.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import demo_data  # noqa: E402

MODEL = ROOT / "models" / "Stable-diffusion" / "palette-demo.safetensors"
SEEDS = 20
SIZE = 256
STEPS = 20
PROMPTS = demo_data.SCORE_PROMPTS
SHAPE_SEEDS = 10
# v8 (shipped 2026-12-01, one run of the script) draws the prompted shape in 77% of the scorer's pictures
# (20 seeds, chance 20%; stars are its weak shape); v3 drew one blob for every shape word (27%).
# docs/demo-model.md.
SHAPE_RATE = 0.6

# The criteria are tested at the CFG scale the file asks the UI for (5 for v8) and, for colour,
# background and position, again at A1111's 7, where v8 overshoots two of eight colour pairs (as v3 did;
# v5, a three-command chain, held there): a strict xfail until a one-run recipe holds at 7.


def suggested_cfg() -> float:
    from modules.types import CheckpointHints

    return CheckpointHints.from_file(MODEL).cfg_scale or 7.0


pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} not trained yet (tools/train_demo_model.py)")


def make_engine(model_dir: Path, outputs: Path):
    from modules.engine import Engine
    from modules.paths import ModelPaths

    return Engine(ModelPaths.create(ROOT, ckpt_dir=model_dir), outputs_root=outputs)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    engine = make_engine(MODEL.parent, tmp_path_factory.mktemp("outputs"))
    engine.select_checkpoint(MODEL.name)
    return engine


def generate(engine, prompt: str, *, negative: str = "", cfg: float | None = None, seed: int = 1, count: int = SEEDS,
             steps: int = STEPS, checkpoint: str = MODEL.name):
    """Measures of `count` pictures (seeds seed, seed+1, ...) at `cfg` (None: the file's suggested scale)."""
    from modules.types import GenerationRequest

    cfg = suggested_cfg() if cfg is None else cfg
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, steps=steps, cfg_scale=cfg,
                                width=SIZE, height=SIZE, seed=seed, batch_size=count, do_not_save=True,
                                checkpoint=checkpoint)
    result = engine.generate(request)
    assert len(result.images) == count
    return [demo_data.measure(im) for im in result.images]


@pytest.fixture(scope="module")
def grid(engine):
    """Every prompt of PROMPTS at 20 seeds at the suggested CFG: {prompt tuple: [Measure]}."""
    return {p: generate(engine, demo_data.prompt_for(*p)) for p in PROMPTS}


def colour_and_background_rate(grid) -> tuple[float, dict]:
    hits = {p: sum(m.shape_color == p[0] and m.background == p[2] for m in ms) for p, ms in grid.items()}
    return sum(hits.values()) / (len(grid) * SEEDS), hits


def position_rate(grid) -> tuple[float, dict]:
    hits = {p: sum(m.position() == p[3] for m in ms) for p, ms in grid.items()}
    return sum(hits.values()) / (len(grid) * SEEDS), hits


def fully_right(results) -> int:
    return sum(m.shape_color == p[0] and m.background == p[2] and m.position() == p[3]
               for p, ms in results.items() for m in ms)


def test_file_is_a_small_sd1_checkpoint_marked_as_demo(engine):
    from modules.weights_io import open_weights

    assert MODEL.stat().st_size <= 40 * 2**20
    sd = open_weights(MODEL)
    assert sd.metadata["palette.demo"] == "true"
    assert sd.metadata["palette.default_resolution"] == str(SIZE)
    assert 1.5 < suggested_cfg() <= 7.0  # the UI's CFG slider follows it (tests/test_ui_browser.py)
    bundle = engine.current_bundle()
    assert bundle.family.name == "SD1"
    assert (bundle.detection.prediction, bundle.detection.prediction_source) == ("v", "v_pred key")
    assert not bundle.report.missing and not bundle.report.unexpected


def test_file_comes_from_one_run_of_the_scripts_default_recipe():
    """The issue asks for a model trained by tools/train_demo_model.py: the shipped file records one run
    (no `--init-from` stage) of the full step count with the Recipe the script has today, so running the
    script as documented remakes it."""
    import json
    from dataclasses import asdict

    import train_demo_model

    training = json.loads(train_demo_model.training_metadata(MODEL))
    assert "init_from" not in training, f"fine-tuned from {training.get('init_from')}"
    assert training["unet_steps_done"] == train_demo_model.Recipe.unet_steps
    assert training["recipe"] == json.loads(json.dumps(asdict(train_demo_model.Recipe())))
    # ... and that this run is the proof of the budget, <= 90 minutes on 2 CPU cores with the
    # autoencoder trained in it (a file retrained on a GPU or with --reuse-vae would not prove it)
    assert (training["device"], training["threads"], training["vae"]) == ("cpu", 2, "trained in this run")
    assert training["seconds"] <= 90 * 60, f"{training['seconds'] / 60:.1f} min"


@pytest.mark.slow
def test_colour_and_background_follow_the_prompt(grid):
    rate, hits = colour_and_background_rate(grid)
    assert rate >= 0.80, f"colour+background correct in {rate:.0%} at CFG {suggested_cfg():g} (per prompt: {hits})"


@pytest.mark.slow
def test_position_follows_the_prompt(grid):
    rate, hits = position_rate(grid)
    assert rate >= 0.60, f"position correct in {rate:.0%} (per prompt: {hits})"


@pytest.mark.slow
def test_shape_follows_the_prompt(engine):
    """Prompts that differ only in the shape word (demo_data.SHAPE_PROMPTS: five shapes in three colour
    pairs) are drawn as that shape, named by demo_data.classify_shape; chance is one in five."""
    per_shape = dict.fromkeys(demo_data.SHAPES, 0)
    for p in demo_data.SHAPE_PROMPTS:
        per_shape[p[1]] += sum(m.shape == p[1] for m in generate(engine, demo_data.prompt_for(*p), count=SHAPE_SEEDS))
    rate = sum(per_shape.values()) / (len(demo_data.SHAPE_PROMPTS) * SHAPE_SEEDS)
    assert rate >= SHAPE_RATE, f"shape right in {rate:.0%} (per shape, of {3 * SHAPE_SEEDS}: {per_shape})"


@pytest.mark.slow
def test_negative_prompt_steers_away_from_its_colour(engine):
    prompt = "a red circle on a white background"
    plain = generate(engine, prompt, seed=100)
    steered = generate(engine, prompt, negative="red", seed=100)
    before = statistics.mean(m.shares["red"] for m in plain)
    after = statistics.mean(m.shares["red"] for m in steered)
    assert after < before * 0.8, f"red share {before:.3f} without, {after:.3f} with the negative prompt 'red'"


@pytest.mark.slow
def test_higher_cfg_follows_the_prompt_more_strictly(engine, grid):
    """CFG 1.5 already draws most pictures right, so "more strictly" is read as how hard the prompt pulls:
    the prompted colour takes more of the picture, while the pictures stay right (>= 90% of what CFG 1.5
    gets fully right)."""
    low = {p: generate(engine, demo_data.prompt_for(*p), cfg=1.5) for p in PROMPTS[:4]}
    high = {p: grid[p] for p in low}

    def share(results):
        return statistics.mean(m.shares[p[0]] for p, ms in results.items() for m in ms)

    assert share(high) > 1.25 * share(low), f"prompted colour's share {share(high):.3f} vs {share(low):.3f} at CFG 1.5"
    assert fully_right(high) >= 0.9 * fully_right(low), f"fully right {fully_right(high)} vs {fully_right(low)} at CFG 1.5"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="demo model v8 overshoots at CFG 7: red/blue comes out blue/purple, "
                                       "white/green pink/green (78% < 80%); docs/demo-model.md")
def test_colour_background_and_position_hold_at_a1111s_default_cfg_7(engine):
    if suggested_cfg() == 7.0:
        pytest.skip("the file suggests CFG 7: the tests at the suggested scale cover it")
    at7 = {p: generate(engine, demo_data.prompt_for(*p), cfg=7.0) for p in PROMPTS}
    rate, hits = colour_and_background_rate(at7)
    assert rate >= 0.80, f"colour+background correct in {rate:.0%} at CFG 7 (per prompt: {hits})"
    placed, hits = position_rate(at7)
    assert placed >= 0.60, f"position correct in {placed:.0%} at CFG 7 (per prompt: {hits})"


def test_a_256_picture_at_20_steps_takes_under_2_seconds_on_cpu(engine):
    if engine.plan.device.type != "cpu":
        pytest.skip("timing criterion is for the CPU")
    best = float("inf")
    for attempt in range(3):  # best of three: the machine may be shared
        start = time.perf_counter()
        generate(engine, "a red circle on a blue background, top left", seed=attempt, count=1)
        best = min(best, time.perf_counter() - start)
    assert best < 2.0, f"best of 3: {best:.2f} s"


@pytest.mark.slow
def test_quick_training_writes_a_loadable_model(tmp_path):
    import train_demo_model

    out = tmp_path / "models" / "quick.safetensors"
    assert train_demo_model.main(["--quick", "--out", str(out)]) == 0
    engine = make_engine(out.parent, tmp_path / "outputs")
    ms = generate(engine, "a red circle on a blue background", count=1, steps=4, checkpoint=out.name)
    assert len(ms) == 1


@pytest.mark.slow
def test_fine_tuning_from_a_demo_file_records_where_it_started(tmp_path):
    """`--init-from` (how v4 and v5 were fine-tuned from v3): the new file loads, and its metadata names its start."""
    import json

    import train_demo_model

    start = tmp_path / "models" / "start.safetensors"
    tuned = tmp_path / "models" / "tuned.safetensors"
    assert train_demo_model.main(["--quick", "--out", str(start), "--work-dir", str(tmp_path / "work")]) == 0
    assert train_demo_model.main(["--quick", "--init-from", str(start), "--set", "shape_weight=4", "--out", str(tuned),
                                  "--work-dir", str(tmp_path / "work")]) == 0
    training = json.loads(train_demo_model.training_metadata(tuned))
    assert training["init_from"].startswith("start.safetensors sha256 ") and training["recipe"]["shape_weight"] == 4
    engine = make_engine(tuned.parent, tmp_path / "outputs")
    assert len(generate(engine, "a red star on a blue background", count=1, steps=4, checkpoint=tuned.name)) == 1
