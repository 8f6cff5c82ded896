"""Reading weight files safely and lazily.

`.safetensors`: the header is parsed and every tensor's offsets checked against the file size before
anything else happens, so a truncated download fails with a clear message while the previous model is
still loaded. Tensors whose stored dtype is the compute dtype are memory-mapped (no copy: pages come from
the page cache on first touch); tensors that need a dtype change are read with `pread` straight into the
converted tensor, so the file is never resident twice.

`.ckpt` / `.pt` / `.pth` / `.bin`: only `torch.load(weights_only=True)`, which refuses any pickle that
would construct objects other than tensors and plain containers.
"""
from __future__ import annotations

import json
import mmap
import os
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")


class WeightFileError(ValueError):
    """A weight file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's place in a safetensors file (offsets relative to the data section)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_safetensors_header(path: Path) -> tuple[int, dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors header. Returns (data_offset, entries, metadata)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightFileError(f"{path.name}: corrupt or incomplete: expected at least 8 bytes, found {len(head)}")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise WeightFileError(
                    f"{path.name}: corrupt or incomplete: header claims {header_len} bytes, "
                    f"file has {max(size - 8, 0)} after the length field"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise WeightFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightFileError(f"{path.name}: corrupt safetensors header (bad JSON: {exc})") from exc

    metadata = header.pop("__metadata__", None) or {}
    data_offset = 8 + header_len
    data_size = size - data_offset
    entries: dict[str, TensorEntry] = {}
    expected_end = 0
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightFileError(f"{path.name}: corrupt safetensors header: bad entry for tensor {name!r}") from exc
        if end < start or end - start != _numel(shape) * _element_size(dtype):
            raise WeightFileError(
                f"{path.name}: corrupt safetensors header: tensor {name!r} has {end - start} bytes for shape {list(shape)}"
            )
        entries[name] = TensorEntry(dtype, shape, start, end)
        expected_end = max(expected_end, end)
    if expected_end > data_size:
        raise WeightFileError(
            f"{path.name}: corrupt or incomplete: expected {data_offset + expected_end} bytes, found {size}"
        )
    return data_offset, entries, {str(k): str(v) for k, v in metadata.items()}


class LazyTensor:
    """A tensor not yet read: knows its shape and dtype; `load()` reads it (memory-mapped if possible)."""

    __slots__ = ("_file", "name", "entry")

    def __init__(self, file: "SafetensorsFile", name: str, entry: TensorEntry) -> None:
        self._file, self.name, self.entry = file, name, entry

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.entry.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.entry.dtype

    def load(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._file.tensor(self.name, dtype)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name}, {list(self.entry.shape)}, {self.entry.dtype})"


class SafetensorsFile(Mapping[str, LazyTensor]):
    """A validated safetensors file; a Mapping of names to LazyTensors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data_offset, self.entries, self.metadata = read_safetensors_header(self.path)
        self._mmap: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mmap is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: private copy-on-write pages, so tensors are writable without touching the file
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mmap

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor. Same dtype → a zero-copy view of the mapping; else read and convert."""
        e = self.entries[name]
        if e.nbytes == 0:
            return torch.empty(e.shape, dtype=dtype or e.dtype)
        if dtype is None or dtype == e.dtype:
            flat = torch.frombuffer(self._map(), dtype=e.dtype, count=_numel(e.shape), offset=self.data_offset + e.start)
            return flat.view(e.shape)
        start = self.data_offset + e.start
        mapped = torch.frombuffer(self._map(), dtype=e.dtype, count=_numel(e.shape), offset=start)
        converted = mapped.view(e.shape).to(dtype)
        self._release(start, e.nbytes)
        return converted

    def _release(self, start: int, length: int) -> None:
        """Drop the mapped pages of a tensor that was converted (its copy is what the model keeps), so
        the file is not resident twice. Only whole pages inside the range are dropped."""
        page = mmap.PAGESIZE
        first = -(-start // page) * page
        last = (start + length) // page * page
        if last > first and hasattr(mmap, "MADV_DONTNEED"):
            self._map().madvise(mmap.MADV_DONTNEED, first, last - first)

    def __getitem__(self, name: str) -> LazyTensor:
        return LazyTensor(self, name, self.entries[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def payload_sha256(self) -> str:
        """sha256 of everything after the header (A1111's 'addnet' LoRA hash uses this)."""
        import hashlib

        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            f.seek(self.data_offset)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside common wrappers ({'state_dict': …}, {'model': …}, {'module': …})."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "module", "params_ema", "params"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path.name}: does not contain a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightFileError(f"{path.name}: contains no tensors")
    return tensors


def load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a pickled checkpoint with `weights_only=True`: code-executing pickles are refused."""
    return _unwrap(load_pickle_object(path), Path(path))


def load_pickle_object(path: Path) -> object:
    """The unpickled object itself (tensors and plain containers only, `weights_only=True`), for files
    that are not a flat state dict, e.g. textual-inversion `.pt` files (`{"string_to_param": …}`)."""
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
    except pickle.UnpicklingError as exc:
        text = str(exc)
        culprit = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if culprit:
            raise WeightFileError(
                f"{path.name}: refused: this pickle would run code to load (it references "
                f"{culprit.group(1)}). Only plain weights files are read; convert it to .safetensors "
                "from a trusted source."
            ) from exc
        detail = re.search(r"Unsupported operand \d+|invalid load key[^.]*", text)
        raise WeightFileError(
            f"{path.name}: not a PyTorch weights file (the safe loader refused it: "
            f"{detail.group(0) if detail else text.splitlines()[0][:120]})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - garbage bytes make the unpickler fail in many ways
        raise WeightFileError(f"{path.name}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    return obj


def open_weights(path: Path) -> Mapping[str, LazyTensor] | dict[str, torch.Tensor]:
    """Open any supported weight file. safetensors → lazy mapping; pickles → dict of tensors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsFile(path)
    if suffix in PICKLE_EXTENSIONS:
        return load_pickle_weights(path)
    raise WeightFileError(f"{path.name}: unsupported file type {suffix!r} (use .safetensors, .ckpt, .pt, .pth or .bin)")


def materialize(value: LazyTensor | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A real tensor from either kind of mapping value, converted to `dtype` when given."""
    if isinstance(value, LazyTensor):
        return value.load(dtype)
    return value if dtype is None or value.dtype == dtype else value.to(dtype)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def stat_key(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
