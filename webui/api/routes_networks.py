"""A1111's extra-network routes: `/sdapi/v1/loras`, `/embeddings` and their refresh routes.

They read only the Engine's contract (`list_loras`, `list_embeddings`, `refresh_networks`): the listing
is the engine's cached scan of the model folders, and the refresh routes rescan them. What A1111 gives
that a `NetworkEntry` does not carry is filled from the entry's metadata when present, else null:
an embedding's `step`, `sd_checkpoint`, `sd_checkpoint_name`, `shape` and `vectors`. `skipped` is
always empty: Palette lists every embedding file and refuses a mismatched one when a prompt uses it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from fastapi import APIRouter

from modules.types import NetworkEntry
from webui.api.context import ApiContext
from webui.api.models import EmbeddingItem, EmbeddingsResponse, LoraItem


def lora_item(entry: NetworkEntry) -> LoraItem:
    """A1111's alias is the kohya `ss_output_name` when the file has one, else the name."""
    metadata = dict(entry.metadata)
    return LoraItem(name=entry.name, alias=metadata.get("ss_output_name") or entry.name, path=str(entry.path),
                    metadata=metadata)


def _int(metadata: Mapping[str, str], key: str) -> int | None:
    try:
        return int(str(metadata[key]).strip())
    except (KeyError, ValueError):
        return None


def embedding_item(entry: NetworkEntry) -> EmbeddingItem:
    meta = entry.metadata
    return EmbeddingItem(step=_int(meta, "step"), sd_checkpoint=meta.get("sd_checkpoint") or None,
                         sd_checkpoint_name=meta.get("sd_checkpoint_name") or None, shape=_int(meta, "shape"),
                         vectors=_int(meta, "vectors"))


def embeddings(ctx: ApiContext) -> EmbeddingsResponse:
    return EmbeddingsResponse(loaded={e.name: embedding_item(e) for e in ctx.engine.list_embeddings()}, skipped={})


def build(ctx: ApiContext, auth: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111 extra networks"])
    engine = ctx.engine

    @router.get("/loras", response_model=list[LoraItem])
    async def loras() -> list[LoraItem]:
        """LoRA files in the Lora folder (use as `<lora:name:1>` in a prompt)."""
        return [lora_item(e) for e in await ctx.run(engine.list_loras)]

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    async def embeddings_route() -> EmbeddingsResponse:
        """Textual-inversion embeddings (use by name in a prompt)."""
        return await ctx.run(embeddings, ctx)

    @router.post("/refresh-loras")
    async def refresh_loras() -> None:
        """Rescan the LoRA and embedding folders."""
        await ctx.run(engine.refresh_networks)

    @router.post("/refresh-embeddings")
    async def refresh_embeddings() -> None:
        """Rescan the LoRA and embedding folders."""
        await ctx.run(engine.refresh_networks)

    return router
