"""A1111's listing and settings routes: options, models, samplers, schedulers, styles, memory, flags.

Checkpoint and VAE lists are read live from the folders, so their refresh routes have nothing to rebuild
(LoRA/embedding routes: routes_networks.py). Model
loads and unloads are queued on the worker so they never race a running generation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Body, Depends

from modules.validation import LATENT_UPSCALE_MODES, RequestError
from webui.api import convert
from webui.api.context import ApiContext, jsonable
from webui.api.models import (
    FaceRestorerItem, LatentUpscalerModeItem, PromptStyleItem, SamplerItem, SchedulerItem, SDModelItem, SDVaeItem,
    UpscalerItem,
)

# A1111's scheduler table: (internal name, default rho, needs the model's sigma table)
_SCHEDULER_META = {
    "Uniform": ("uniform", -1.0, True), "Karras": ("karras", 7.0, False), "Exponential": ("exponential", -1.0, False),
    "Polyexponential": ("polyexponential", 1.0, False), "SGM Uniform": ("sgm_uniform", -1.0, True),
    "KL Optimal": ("kl_optimal", -1.0, False), "Align Your Steps": ("align_your_steps", -1.0, False),
    "Simple": ("simple", -1.0, True), "Normal": ("normal", -1.0, True), "DDIM": ("ddim", -1.0, True),
    "Beta": ("beta", -1.0, True),
}


def get_options(ctx: ApiContext) -> dict[str, Any]:
    """Settings as A1111 names them; the checkpoint as its title, plus its sha256 when known."""
    data = jsonable(ctx.engine.settings.to_dict())
    current = ctx.engine.current_checkpoint
    if current is not None:
        data["sd_model_checkpoint"] = current.title
        data["sd_checkpoint_hash"] = _sha256(ctx, current.path)
    return data


def _sha256(ctx: ApiContext, path: Path) -> str | None:
    hashes = getattr(ctx.engine, "hashes", None)
    return hashes.sha256(path, compute=False) if hashes is not None else None


def upscaler_items(ctx: ApiContext) -> list[UpscalerItem]:
    """A1111's list: name, model_name (the folder family for model files), path and scale."""
    items = []
    for info in ctx.engine.list_upscalers():
        model_name = None if info.kind == "none" else (info.folder if info.kind == "model" else info.name)
        items.append(UpscalerItem(name=info.name, model_name=model_name,
                                  model_path=str(info.path) if info.path else None, scale=info.scale))
    return items


def face_restorer_items(ctx: ApiContext) -> list[FaceRestorerItem]:
    """A1111's list (name, cmd_dir), plus the file in use and why a restorer cannot run."""
    registry = getattr(ctx.engine, "face_restorers", None)
    infos = registry.list() if registry is not None else []
    return [FaceRestorerItem(name=i.name, cmd_dir=str(i.folder), model_path=str(i.path) if i.path else None,
                             unavailable=i.unavailable) for i in infos]


def sd_models(ctx: ApiContext) -> list[SDModelItem]:
    items = []
    for info in ctx.engine.list_checkpoints():
        config = Path(info.path).with_suffix(".yaml")
        items.append(SDModelItem(title=info.title, model_name=info.model_name, hash=info.short_hash,
                                 sha256=_sha256(ctx, info.path), filename=str(info.path),
                                 config=str(config) if config.is_file() else None))
    return items


def sd_vaes(ctx: ApiContext) -> list[SDVaeItem]:
    folder = getattr(getattr(ctx.engine, "paths", None), "folder", None)
    root = folder("vae") if folder else None
    items = []
    for path in ctx.engine.list_vaes():
        name = str(path.relative_to(root)) if root and root in path.parents else path.name
        items.append(SDVaeItem(model_name=name, filename=str(path)))
    return items


def samplers(ctx: ApiContext) -> list[SamplerItem]:
    try:
        from modules.sampling.samplers import SAMPLERS
    except ImportError:
        return [SamplerItem(name=n, aliases=[], options={}) for n in ctx.engine.samplers()]
    items = []
    for info in SAMPLERS.values():
        options: dict[str, Any] = {}
        if info.default_scheduler:
            options["scheduler"] = info.default_scheduler
        for flag in ("second_order", "brownian_noise", "uses_ensd", "discard_next_to_last_sigma", "needs_uncond"):
            if getattr(info, flag):
                options[flag] = True
        items.append(SamplerItem(name=info.label, aliases=list(info.aliases), options=options))
    return items


def schedulers() -> list[SchedulerItem]:
    from modules.sampling.schedules import SCHEDULE_ALIASES, SCHEDULES

    items = [SchedulerItem(name="automatic", label="Automatic", aliases=None)]
    for label in SCHEDULES:
        name, rho, inner = _SCHEDULER_META.get(label, (label.lower().replace(" ", "_"), -1.0, False))
        aliases = [a for a, target in SCHEDULE_ALIASES.items() if target == label and a != name]
        items.append(SchedulerItem(name=name, label=label, aliases=aliases or None, default_rho=rho,
                                   need_inner_model=inner))
    return items


def memory() -> dict[str, Any]:
    """A1111's shape: process RAM from psutil, CUDA statistics when a GPU is present."""
    import psutil
    import torch

    process = psutil.Process()
    rss = process.memory_info().rss
    total = psutil.virtual_memory().total
    out: dict[str, Any] = {"ram": {"free": total - rss, "used": rss, "total": total}}
    if not torch.cuda.is_available():
        out["cuda"] = {"error": "unavailable"}
        return out
    free, total_gpu = torch.cuda.mem_get_info()
    s = torch.cuda.memory_stats()

    def pair(key: str) -> dict[str, int]:
        return {"current": s.get(f"{key}.all.current", 0), "peak": s.get(f"{key}.all.peak", 0)}

    out["cuda"] = {
        "system": {"free": free, "used": total_gpu - free, "total": total_gpu},
        "active": pair("active_bytes"), "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
    }
    return out


def cmd_flags(ctx: ApiContext) -> dict[str, Any]:
    """The launch flags under A1111's names; passwords are never echoed."""
    o = ctx.options
    paths = getattr(o, "paths", None)
    overrides = getattr(paths, "overrides", {}) or {}
    host = getattr(o, "host", "127.0.0.1")
    return jsonable({
        "api": getattr(o, "api", True), "nowebui": getattr(o, "nowebui", False), "server_name": host,
        "listen": host not in ("127.0.0.1", "localhost", "::1"), "port": getattr(o, "port", None),
        "share": getattr(o, "share", False), "gradio_auth": "<set>" if getattr(o, "auth", ()) else None,
        "api_auth": "<set>" if getattr(o, "api_auth", ()) else None,
        "skip_load_model_at_start": getattr(o, "skip_load_model_at_start", False),
        "data_dir": str(ctx.data_dir), "models_dir": str(getattr(paths, "models_dir", "")) or None,
        "ckpt_dir": overrides.get("checkpoints"), "vae_dir": overrides.get("vae"),
        "lora_dir": overrides.get("lora"), "embeddings_dir": overrides.get("embeddings"),
    })


def set_options(ctx: ApiContext, values: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Validate every value first (nothing is applied if one is bad); returns (changes, checkpoint)."""
    changes, _unknown = convert.split_options(values, None)  # unknown keys: ignored, as A1111 does
    wanted = changes.pop("sd_model_checkpoint", None)
    checkpoint = None
    if wanted:
        try:
            info = ctx.engine.find_checkpoint(wanted)
        except FileNotFoundError as exc:
            raise RequestError("sd_model_checkpoint", str(exc)) from None
        current = ctx.engine.current_checkpoint
        checkpoint = None if current is not None and current.path == info.path else info.name
    return changes, checkpoint


def build(ctx: ApiContext, auth: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111 models and settings"])
    engine = ctx.engine

    @router.get("/options")
    async def options_get() -> dict[str, Any]:
        """Every option (A1111 names)."""
        return await ctx.run(get_options, ctx)

    @router.post("/options")
    async def options_set(values: dict[str, Any] = Body(...), user: str | None = Depends(auth)) -> None:
        """Set options; `sd_model_checkpoint` loads that model (on the worker, after the running job).
        Unknown keys are ignored, so a dict from GET can be posted back."""
        changes, checkpoint = await ctx.run(set_options, ctx, values)
        if checkpoint:
            await ctx.run_task(lambda: engine.select_checkpoint(checkpoint), f"Loading {checkpoint}", user)
        if changes:
            engine.update_settings(**changes)
            if "queue_max_size" in changes:
                ctx.queue.max_size = changes["queue_max_size"]
        await ctx.run(engine.save_settings)
        return None

    @router.get("/sd-models", response_model=list[SDModelItem])
    async def sd_models_route() -> list[SDModelItem]:
        return await ctx.run(sd_models, ctx)

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    async def sd_vae_route() -> list[SDVaeItem]:
        return await ctx.run(sd_vaes, ctx)

    @router.get("/samplers", response_model=list[SamplerItem])
    async def samplers_route() -> list[SamplerItem]:
        return samplers(ctx)

    @router.get("/schedulers", response_model=list[SchedulerItem])
    async def schedulers_route() -> list[SchedulerItem]:
        return schedulers()

    @router.get("/upscalers", response_model=list[UpscalerItem])
    async def upscalers() -> list[UpscalerItem]:
        return await ctx.run(upscaler_items, ctx)

    @router.get("/face-restorers", response_model=list[FaceRestorerItem])
    async def face_restorers() -> list[FaceRestorerItem]:
        return await ctx.run(face_restorer_items, ctx)

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    async def latent_upscale_modes() -> list[LatentUpscalerModeItem]:
        return [LatentUpscalerModeItem(name=n) for n in LATENT_UPSCALE_MODES]

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    async def prompt_styles() -> list[PromptStyleItem]:
        styles = await ctx.run(ctx.styles.load)
        return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in styles.values()]

    @router.get("/cmd-flags")
    async def cmd_flags_route() -> dict[str, Any]:
        return cmd_flags(ctx)

    @router.get("/memory")
    async def memory_route() -> dict[str, Any]:
        return await ctx.run(memory)

    @router.get("/scripts")
    async def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    for path in ("/extensions", "/script-info", "/hypernetworks", "/realesrgan-models", "/sd-modules"):
        router.add_api_route(path, _empty_list, methods=["GET"], summary=f"{path[1:]} (none in Palette yet)")

    for path in ("/refresh-checkpoints", "/refresh-vae"):  # LoRA/embedding refresh: routes_networks
        router.add_api_route(path, _nothing, methods=["POST"],
                             summary=f"{path[1:]}: lists are read from disk on every call")

    @router.post("/unload-checkpoint")
    async def unload_checkpoint(user: str | None = Depends(auth)) -> None:
        unload = getattr(engine, "unload", None)
        if unload is not None:
            await ctx.run_task(unload, "Unloading the model", user)

    @router.post("/reload-checkpoint")
    async def reload_checkpoint(user: str | None = Depends(auth)) -> None:
        await ctx.run_task(lambda: (engine.current_bundle(), None)[1], "Loading the model", user)

    return router


async def _empty_list() -> list[Any]:
    return []


async def _nothing() -> None:
    return None
