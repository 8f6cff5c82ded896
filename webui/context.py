"""What every tab needs: the engine, the job queue, launch facts, and the cross-tab registry.

Tabs are built one after another, but "Send to img2img" in txt2img needs img2img's widgets. Each tab
registers its widgets here while building; `wire` callbacks run after all tabs exist.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from webui.styles import StyleDatabase


@dataclass
class UIContext:
    engine: Any
    queue: Any
    is_local: bool = True
    data_dir: Path = Path(".")
    styles: StyleDatabase | None = None
    tabs: Any = None  # the gr.Tabs holding every tab, so handlers can switch tab
    widgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # tab id → field name → widget
    images: dict[str, Any] = field(default_factory=dict)  # tab id → its input image widget
    wiring: list[Callable[["UIContext"], None]] = field(default_factory=list)
    _active: dict[tuple[str, str], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def later(self, fn: Callable[["UIContext"], None]) -> None:
        """Run `fn(ctx)` once every tab is built (cross-tab events)."""
        self.wiring.append(fn)

    # A browser session's running job per tab: Interrupt/Skip act on it and on nothing else.
    def set_active(self, owner: str, tab: str, job: Any) -> None:
        with self._lock:
            self._active[(owner, tab)] = job

    def active(self, owner: str, tab: str) -> Any | None:
        with self._lock:
            return self._active.get((owner, tab))

    def clear_active(self, owner: str, tab: str, job: Any) -> None:
        with self._lock:
            if self._active.get((owner, tab)) is job:
                del self._active[(owner, tab)]


def owner_of(request: Any) -> str:
    """The logged-in user, else the browser session (one per page load)."""
    if request is None:
        return "anonymous"
    user = getattr(request, "username", None)
    return f"user:{user}" if user else f"session:{request.session_hash}"


def session_of(request: Any) -> str:
    """One browser page load; Interrupt/Skip act on this session's job only."""
    return getattr(request, "session_hash", None) or "no-session"
