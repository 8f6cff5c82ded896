"""Models built from files, kept by path: the few most recently used stay loaded, and one whose file
changed on disk (size or modification time) is built again. Upscalers and face restorers share it."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime in ns): what tells a replaced file from the one already loaded."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class FileModelCache(Generic[T]):
    """An LRU of `keep` models by file path, safe to use from several threads."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._entries: OrderedDict[Path, tuple[tuple[int, int], T]] = OrderedDict()

    def get(self, path: Path, build: Callable[[], T]) -> T:
        """The model for `path`, calling `build()` when it is not loaded or the file changed."""
        stamp = file_stamp(path)
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(path)
                return entry[1]
            value = build()
            self._entries[path] = (stamp, value)
            self._entries.move_to_end(path)
            while len(self._entries) > self.keep:
                self._entries.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
