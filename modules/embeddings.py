"""Textual-inversion files → `TextualInversion` vectors, and which of them a model can use.

Formats (as A1111's textual_inversion.py reads them; the trigger word is always the file stem):
- `.pt` / `.bin` with `string_to_param: {"*": [n, width]}` (A1111 / original TI), read with the
  weights-only unpickler, so a file that would run code is refused;
- a single tensor (`.safetensors` `emb_params`, a diffusers concept `.bin` `{"<token>": [width]}`);
- SDXL files with `clip_l` [n, 768] and `clip_g` [n, 1280].

An embedding fits a model when it has vectors for each of the model's text encoders with that
encoder's width (A1111 compares the total width); the others are skipped and listed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from modules.text_encoding import EmbeddingTable, TextualInversion
from modules.weights_io import SafetensorsFile, WeightFileError, load_pickle_object, materialize

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")
SDXL_ROLES = ("clip_l", "clip_g")
_WIDTH_FAMILIES = {768: "sd1", 1024: "sd2"}
DETAIL_KEYS = ("step", "sd_checkpoint", "sd_checkpoint_name")  # A1111 .pt fields listed by the API
DETAIL_MAX_CHARS = 256


class EmbeddingFileError(WeightFileError):
    """An embedding file whose layout is not one of the known ones."""


def _vectors(value: Any, path: Path, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{path.name}: {what} is not a tensor")
    t = value.detach().to(torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] == 0:
        raise EmbeddingFileError(f"{path.name}: {what} has shape {list(value.shape)}; expected [vectors, width]")
    return t.contiguous()


def embedding_from_data(data: Any, path: Path, name: str | None = None) -> TextualInversion:
    """The vectors of an already-read file (`data` as unpickled, or {key: tensor} from safetensors)."""
    name = name or path.stem
    if not isinstance(data, Mapping):
        raise EmbeddingFileError(f"{path.name}: not an embedding (found {type(data).__name__})")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else 0
            raise EmbeddingFileError(f"{path.name}: string_to_param holds {count} terms; an embedding has one")
        return TextualInversion(name, _vectors(next(iter(params.values())), path, "string_to_param"))
    if all(role in data for role in SDXL_ROLES):
        vectors = {role: _vectors(data[role], path, role) for role in SDXL_ROLES}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise EmbeddingFileError(f"{path.name}: clip_l and clip_g have different vector counts")
        return TextualInversion(name, vectors)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:
        key, value = next(iter(tensors.items()))
        return TextualInversion(name, _vectors(value, path, repr(key)))
    raise EmbeddingFileError(
        f"{path.name}: not a textual-inversion embedding (expected string_to_param, clip_l + clip_g, or a "
        f"single tensor; found {len(tensors)} tensors: {', '.join(list(tensors)[:5])})"
    )


def read_embedding(path: Path) -> TextualInversion:
    """Read one embedding file; raises WeightFileError naming the file when it cannot be used."""
    return read_embedding_details(path)[0]


def read_embedding_details(path: Path) -> tuple[TextualInversion, dict[str, str]]:
    """The vectors and what A1111 lists about the file (`/sdapi/v1/embeddings`): see `embedding_details`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        file = SafetensorsFile(path)
        data: Any = {key: materialize(value) for key, value in file.items()}
    elif suffix in (".pt", ".bin"):
        data = load_pickle_object(path)
    else:
        raise EmbeddingFileError(f"{path.name}: unsupported embedding file type {suffix!r} (use .pt, .bin or .safetensors)")
    embedding = embedding_from_data(data, path)
    return embedding, embedding_details(embedding, data)


def embedding_details(embedding: TextualInversion, data: Mapping[str, Any]) -> dict[str, str]:
    """A1111's `Embedding` fields as strings: `vectors` (token slots), `shape` (vector width; clip_l +
    clip_g widths summed for SDXL, as A1111 does), and `step`, `sd_checkpoint`, `sd_checkpoint_name`
    when the file stores them (A1111's own .pt training output does)."""
    if isinstance(embedding.vectors, torch.Tensor):
        width = int(embedding.vectors.shape[-1])
    else:
        width = sum(int(v.shape[-1]) for v in embedding.vectors.values())
    out = {"vectors": str(embedding.count), "shape": str(width)}
    for key in DETAIL_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, torch.Tensor):
            text = "".join(c for c in str(value) if c >= " ")[:DETAIL_MAX_CHARS]
            if text:
                out[key] = text
    return out


def embedding_family(embedding: TextualInversion) -> str | None:
    """"sdxl" for clip_l + clip_g, "sd1" for 768-wide, "sd2" for 1024-wide vectors, else None."""
    if not isinstance(embedding.vectors, torch.Tensor):
        return "sdxl"
    return _WIDTH_FAMILIES.get(int(embedding.vectors.shape[-1]))


def encoder_widths(stack: Any) -> dict[str, int]:
    """{role: width} of a TextEncoderStack's encoders."""
    return {unit.role: int(unit.model.config.hidden_size) for unit in stack.units}


def fits(embedding: TextualInversion, widths: Mapping[str, int]) -> bool:
    """Vectors for every encoder, each of its width, and nothing else (A1111: total width matches)."""
    if isinstance(embedding.vectors, torch.Tensor):
        return len(widths) == 1 and int(embedding.vectors.shape[-1]) == next(iter(widths.values()))
    if set(embedding.vectors) != set(widths):
        return False
    return all(int(embedding.vectors[role].shape[-1]) == width for role, width in widths.items())


def split_by_fit(embeddings: Iterable[TextualInversion], widths: Mapping[str, int]
                 ) -> tuple[list[TextualInversion], list[TextualInversion]]:
    """(usable, skipped) for a model with these encoder widths."""
    usable, skipped = [], []
    for embedding in embeddings:
        (usable if fits(embedding, widths) else skipped).append(embedding)
    return usable, skipped


class RecordingLookup:
    """An EmbeddingTable that remembers which embeddings a job's prompts actually used (for the
    infotext's `TI hashes`)."""

    def __init__(self, table: EmbeddingTable) -> None:
        self.table = table
        self.used: dict[str, TextualInversion] = {}

    def find(self, tokens: Sequence[int], offset: int) -> tuple[TextualInversion, int] | None:
        found = self.table.find(tokens, offset)
        if found is not None:
            self.used[found[0].name] = found[0]
        return found
