"""Who may call the API: `--api-auth` (HTTP Basic) and a same-origin rule for state-changing calls.

These are FastAPI dependencies rather than middleware because the API is added to Gradio's app after
it has started (middleware can no longer be added then); every API route carries them.
"""
from __future__ import annotations

import secrets
from typing import Any, Callable
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_basic = HTTPBasic(auto_error=False, description="--api-auth user:password")


def _check(credentials: HTTPBasicCredentials, users: tuple[tuple[str, str], ...]) -> bool:
    """Constant-time compare against every pair (no early exit that would time the user list)."""
    given_user, given_pass = credentials.username.encode(), credentials.password.encode()
    ok = False
    for user, password in users:
        same_user = secrets.compare_digest(given_user, user.encode())
        same_pass = secrets.compare_digest(given_pass, password.encode())
        ok |= same_user & same_pass
    return ok


def make_auth(users: tuple[tuple[str, str], ...]) -> Callable[..., Any]:
    """A dependency returning the caller's user name (None when no --api-auth is configured)."""

    async def no_auth() -> None:
        return None

    async def require_auth(credentials: HTTPBasicCredentials | None = Depends(_basic)) -> str | None:
        if credentials is None or not _check(credentials, users):
            raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
        return credentials.username

    return require_auth if users else no_auth


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def make_origin_check(local_only: bool) -> Callable[..., Any]:
    """Refuse cross-site browser requests (CSRF from any web page the user visits).

    Browsers send `Origin` and `Sec-Fetch-Site` with POST/DELETE; clients such as curl or webuiapi send
    neither and are allowed. When the server listens only on loopback, a Host header that is not a
    loopback name means DNS rebinding, so it is refused for every method."""

    async def same_origin(request: Request) -> None:
        host = request.headers.get("host", "")
        if local_only and host and _hostname(host) not in {h.strip("[]") for h in LOCAL_HOSTS}:
            raise HTTPException(403, f"unexpected Host header {host!r}: this server only answers to localhost")
        if request.method in SAFE_METHODS:
            return
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise HTTPException(403, f"cross-origin request refused (Sec-Fetch-Site: {site})")
        origin = request.headers.get("origin")
        if origin is None:
            return
        parsed = urlsplit(origin)
        if origin == "null" or not parsed.netloc or parsed.netloc.lower() != host.lower():
            raise HTTPException(403, f"cross-origin request refused (Origin {origin!r} is not this server)")

    return same_origin
