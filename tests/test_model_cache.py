"""The cache upscalers and face restorers keep their loaded models in."""
from __future__ import annotations

import os

from modules.model_cache import FileModelCache


def test_keeps_the_most_recent_and_rebuilds_a_changed_file(tmp_path):
    files = [tmp_path / f"{n}.pth" for n in "abc"]
    for f in files:
        f.write_bytes(b"1")
    built: list[str] = []
    cache: FileModelCache[str] = FileModelCache(keep=2)

    def get(path):
        return cache.get(path, lambda: built.append(path.stem) or f"model {path.stem}")

    assert get(files[0]) == "model a" and get(files[1]) == "model b" and get(files[0]) == "model a"
    assert built == ["a", "b"]  # the second "a" came from the cache
    get(files[2])  # evicts "b", the least recently used
    get(files[0])
    get(files[1])
    assert built == ["a", "b", "c", "b"]
    files[1].write_bytes(b"22")  # replaced on disk: built again
    os.utime(files[1], ns=(1, 1))
    get(files[1])
    assert built == ["a", "b", "c", "b", "b"]
    cache.clear()
    get(files[0])
    assert built[-1] == "a"
