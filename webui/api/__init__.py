"""Palette's REST API: A1111's `/sdapi/v1` (so existing clients run unchanged) plus `/palette/v1` jobs.

`mount_api` adds the routes to a running app (Gradio's, from `webui.server.launch_ui` with `--api`);
`create_api_app` builds a standalone FastAPI app (`--nowebui`, tests, benchmarks). Auth and the
same-origin rule are route dependencies, so they hold in both cases.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from webui.api import routes_generate, routes_info, routes_jobs, routes_networks
from webui.api.auth import make_auth, make_origin_check
from webui.api.context import ApiContext

TITLE = "Palette API"
VERSION = "1.0"
DESCRIPTION = (
    "A1111-compatible `/sdapi/v1` routes and Palette's `/palette/v1` job queue. Validation errors are 422 "
    "and name the field; a full queue is 429; a failed job is 500 with its cause. With `--api-auth`, every "
    "route needs HTTP Basic credentials. Browser POSTs from other origins are refused."
)


def build_router(engine: Any, queue: Any, options: Any = None) -> APIRouter:
    """Every API route, guarded by --api-auth and the same-origin check."""
    ctx = ApiContext.create(engine, queue, options)
    auth = make_auth(tuple(getattr(options, "api_auth", ()) or ()))
    local_only = bool(getattr(options, "is_local", False))
    guards = [Depends(auth), Depends(make_origin_check(local_only))]
    router = APIRouter(dependencies=guards)
    router.include_router(routes_generate.build(ctx, auth))
    router.include_router(routes_info.build(ctx, auth))
    router.include_router(routes_jobs.build(ctx, auth))
    router.include_router(routes_networks.build(ctx, auth))
    _add_docs(router)
    router.palette_context = ctx  # type: ignore[attr-defined]  # for tests
    return router


DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
DOCS_ASSETS_URL = "/palette/v1/docs-assets"


def docs_asset(name: str) -> Path:
    """Swagger UI's files as fastapi-offline ships them, so the docs page works with no network."""
    if name not in DOCS_ASSETS:
        raise HTTPException(404, detail=f"no docs asset {name!r}")
    return Path(str(resources.files("fastapi_offline").joinpath("static", name)))


def _add_docs(router: APIRouter) -> None:
    """OpenAPI schema and Swagger page (assets served from here, no CDN) behind the same guards.
    `/docs` (A1111's address) leads to it, on the UI's server as on `--nowebui`."""
    schema: dict[str, Any] = {}

    async def openapi() -> dict[str, Any]:
        if not schema:
            schema.update(get_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, routes=router.routes))
        return schema

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/palette/v1/openapi.json", title=f"{TITLE} docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # never ask swagger.io to validate the schema
        )

    async def asset(name: str) -> FileResponse:
        return FileResponse(docs_asset(name), media_type=DOCS_ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    async def docs_redirect() -> RedirectResponse:
        return RedirectResponse("/palette/v1/docs")

    router.add_api_route("/palette/v1/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    router.add_api_route("/palette/v1/docs", docs, methods=["GET"], include_in_schema=False)
    router.add_api_route(DOCS_ASSETS_URL + "/{name}", asset, methods=["GET"], include_in_schema=False)
    router.add_api_route("/docs", docs_redirect, methods=["GET"], include_in_schema=False)


def mount_api(app: FastAPI, engine: Any, queue: Any, options: Any = None) -> APIRouter:
    """Add the API routes to `app` (works on an app that is already serving: routes only, no middleware)."""
    router = build_router(engine, queue, options)
    app.include_router(router)
    return router


def create_api_app(engine: Any, queue: Any, options: Any = None) -> FastAPI:
    """A FastAPI app with only the API (for --nowebui). Docs: /docs → /palette/v1/docs."""
    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url=None)
    router = mount_api(app, engine, queue, options)
    app.state.palette_context = router.palette_context  # type: ignore[attr-defined]
    return app


__all__ = ["build_router", "create_api_app", "mount_api"]
