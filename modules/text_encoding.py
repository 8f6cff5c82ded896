"""Prompt → `Conditioning`, computed the way A1111 computes it, so A1111 infotexts reproduce.

Input is A1111's parsed prompt: `[(text, weight), …]` from `parse_prompt_attention`, with BREAK as
`("BREAK", -1)`. The steps (A1111's `sd_hijack_clip.py`, `sd_hijack_open_clip.py`, `sd_emphasis.py`,
`sd_models_xl.py`):

1. Each piece is tokenized on its own; textual-inversion names found in the tokens are replaced by as
   many placeholder slots as the embedding has vectors.
2. Tokens go into chunks of 75; each chunk becomes BOS + 75 + EOS = 77, padded with EOS. When a chunk
   fills up and the last comma is at most `comma_padding_backtrack` tokens back, the text after that
   comma moves to the next chunk. BREAK closes the current chunk.
3. OpenCLIP encoders (SD2's ViT-H, SDXL's bigG) get id 0 instead of EOS after the first EOS.
4. Every chunk is encoded; the layer read depends on the model (see `LAYER_POLICIES`), then emphasis
   scales each token's vector, and the chunks are concatenated along the token axis.
5. SDXL: CLIP-L (768) and bigG (1280) outputs are concatenated to 2048 channels; the pooled vector is
   bigG's projected EOS feature of the first chunk, and the ADM vector `y` adds size/crop (and, for the
   refiner, aesthetic-score) Fourier features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import torch

from modules.nn.clip import TextEncoder, TextEncoderOutput, TokenOverride, load_text_encoder
from modules.tokenizer import BOS_ID, EOS_ID, CLIPTokenizer, default_tokenizer
from modules.types import Conditioning
from modules.weights_io import WeightFileError

CHUNK_LENGTH = 75  # prompt tokens per chunk; with BOS and EOS a chunk is 77 long
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
# Which hidden state each model reads (A1111):
#   "clip_skip"      SD1 CLIP-L: last layer (normed) at clip_skip 1, else final_layer_norm(hidden_states[-n])
#   "penultimate_ln" SD2 ViT-H: final_layer_norm(hidden_states[-2]); CLIP skip is ignored
#   "penultimate"    SDXL CLIP-L and bigG: hidden_states[-2], no final norm (CLIP-L honours CLIP skip
#                    only with A1111's "sdxl_clip_l_skip" option: hidden_states[-n], no norm)
LAYER_POLICIES = ("clip_skip", "penultimate_ln", "penultimate")
ADM_FEATURE_DIM = 256  # SGM's ConcatTimestepEmbedderND(256) per scalar
_ACT_BY_ROLE = {"clip_l": "quick_gelu", "clip_h": "gelu", "clip_g": "gelu"}

Parsed = Sequence[tuple[str, float]]


# ---- textual inversion ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextualInversion:
    """One embedding: a [n, width] tensor (SD1/SD2) or vectors per encoder role (SDXL: clip_l, clip_g)."""

    name: str
    vectors: torch.Tensor | Mapping[str, torch.Tensor]

    @property
    def count(self) -> int:
        """How many token slots it occupies (A1111's `embedding.vectors`)."""
        first = self.vectors if isinstance(self.vectors, torch.Tensor) else next(iter(self.vectors.values()))
        return int(first.shape[0])

    def vectors_for(self, role: str) -> torch.Tensor:
        if isinstance(self.vectors, torch.Tensor):
            return self.vectors
        if role not in self.vectors:
            raise ValueError(f"embedding {self.name!r} has no vectors for the {role} text encoder "
                             f"(it has {', '.join(self.vectors)}); it was trained for another model family")
        return self.vectors[role]


class EmbeddingLookup(Protocol):
    """Finds a textual-inversion name in a piece's tokens: `find(tokens, offset)` returns the embedding
    starting at `tokens[offset]` and how many tokens its name spans, or None."""

    def find(self, tokens: Sequence[int], offset: int) -> tuple[TextualInversion, int] | None: ...


class EmbeddingTable:
    """A1111's lookup: each name is tokenized; candidates are indexed by first token, longest first."""

    def __init__(self, tokenizer: CLIPTokenizer | None = None, embeddings: Iterable[TextualInversion] = ()) -> None:
        self.tokenizer = tokenizer or default_tokenizer()
        self._by_first: dict[int, list[tuple[tuple[int, ...], TextualInversion]]] = {}
        for embedding in embeddings:
            self.add(embedding)

    def add(self, embedding: TextualInversion) -> None:
        ids = tuple(self.tokenizer.encode(embedding.name))
        if not ids:
            raise ValueError(f"embedding name {embedding.name!r} has no tokens")
        bucket = [entry for entry in self._by_first.get(ids[0], []) if entry[1].name != embedding.name]
        bucket.append((ids, embedding))
        bucket.sort(key=lambda entry: len(entry[0]), reverse=True)
        self._by_first[ids[0]] = bucket

    def find(self, tokens: Sequence[int], offset: int) -> tuple[TextualInversion, int] | None:
        for ids, embedding in self._by_first.get(tokens[offset], ()):
            if tuple(tokens[offset : offset + len(ids)]) == ids:
                return embedding, len(ids)
        return None


# ---- chunking ---------------------------------------------------------------------------------------

@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 prompt/pad slots, EOS; padded with EOS), one weight each, and the
    embeddings to write in: (offset counted without BOS, embedding)."""

    tokens: list[int]
    multipliers: list[float]
    fixes: list[tuple[int, TextualInversion]] = field(default_factory=list)


class _ChunkBuilder:
    def __init__(self, chunk_length: int) -> None:
        self.chunk_length = chunk_length
        self.chunks: list[PromptChunk] = []
        self.token_count = 0
        self._reset()

    def _reset(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list[tuple[int, TextualInversion]] = []
        self.last_comma = -1

    def close(self, is_last: bool = False) -> None:
        """Pad the open chunk with EOS, add BOS/EOS, start a new one. The UI count includes the padding
        of every chunk but the last."""
        self.token_count += len(self.tokens) if is_last else self.chunk_length
        pad = max(self.chunk_length - len(self.tokens), 0)
        self.chunks.append(PromptChunk(
            [BOS_ID, *self.tokens, *[EOS_ID] * pad, EOS_ID],
            [1.0, *self.multipliers, *[1.0] * pad, 1.0],
            self.fixes,
        ))
        self._reset()


def build_chunks(
    parsed: Parsed,
    tokenizer: CLIPTokenizer,
    *,
    embeddings: EmbeddingLookup | None = None,
    comma_padding_backtrack: int = 20,
    chunk_length: int = CHUNK_LENGTH,
) -> tuple[list[PromptChunk], int]:
    """A1111's `tokenize_line`: the chunks of one prompt and its token count (for the N/75 counter)."""
    comma = tokenizer.comma_token_id
    b = _ChunkBuilder(chunk_length)
    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            b.close()
            continue
        tokens = tokenizer.encode(text)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                b.last_comma = len(b.tokens)
            elif (comma_padding_backtrack != 0 and len(b.tokens) == chunk_length and b.last_comma != -1
                  and len(b.tokens) - b.last_comma <= comma_padding_backtrack):
                # Word wrap at the last comma. Like A1111, embedding fixes stay with the closed chunk.
                cut = b.last_comma + 1
                moved_tokens, moved_mults = b.tokens[cut:], b.multipliers[cut:]
                del b.tokens[cut:], b.multipliers[cut:]
                b.close()
                b.tokens, b.multipliers = moved_tokens, moved_mults
            if len(b.tokens) == chunk_length:
                b.close()
            found = embeddings.find(tokens, position) if embeddings is not None else None
            if found is None:
                b.tokens.append(token)
                b.multipliers.append(weight)
                position += 1
                continue
            embedding, name_length = found
            if len(b.tokens) + embedding.count > chunk_length:
                b.close()
            b.fixes.append((len(b.tokens), embedding))
            b.tokens += [0] * embedding.count
            b.multipliers += [weight] * embedding.count
            position += name_length
    if b.tokens or not b.chunks:
        b.close(is_last=True)
    return b.chunks, b.token_count


def target_token_count(token_count: int, chunk_length: int = CHUNK_LENGTH) -> int:
    """Capacity shown next to the count: the next multiple of 75 (at least 75)."""
    return math.ceil(max(token_count, 1) / chunk_length) * chunk_length


def pad_after_first_eos(tokens: Sequence[int], pad_id: int) -> list[int]:
    """OpenCLIP padding: everything after the first EOS becomes `pad_id` (A1111 uses 0)."""
    out = list(tokens)
    end = out.index(EOS_ID)
    out[end + 1 :] = [pad_id] * (len(out) - end - 1)
    return out


# ---- emphasis, layers, ADM --------------------------------------------------------------------------

def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str) -> torch.Tensor:
    """A1111's emphasis on one chunk's output z [B, 77, C] with weights [B, 77].
    Original: scale each token, then rescale the whole tensor back to its old mean.
    No norm: scale only. Ignore / None: weights have no effect ("None" also means the caller passed the
    raw prompt as a single piece, since A1111 then skips attention parsing)."""
    if mode not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis mode {mode!r}; expected one of {', '.join(EMPHASIS_MODES)}")
    if mode in ("Ignore", "None"):
        return z
    scaled = z * multipliers.to(z)[..., None]
    if mode == "No norm":
        return scaled
    return scaled * (z.mean() / scaled.mean())


def select_layer(model: TextEncoder, out: TextEncoderOutput, policy: str, clip_skip: int,
                 sdxl_clip_l_skip: bool = False) -> torch.Tensor:
    """The hidden state A1111 feeds the UNet, per `LAYER_POLICIES`."""
    def skipped(n: int) -> torch.Tensor:
        if n > len(out.hidden_states):
            raise ValueError(f"CLIP skip {n} is deeper than this text encoder ({len(out.hidden_states) - 1} layers)")
        return out.hidden_states[-n]

    if policy == "clip_skip":
        return out.last_hidden_state if clip_skip <= 1 else model.final_layer_norm(skipped(clip_skip))
    if policy == "penultimate_ln":
        return model.final_layer_norm(out.hidden_states[-2])
    if policy == "penultimate":
        return skipped(max(clip_skip, 1)) if sdxl_clip_l_skip else out.hidden_states[-2]
    raise ValueError(f"unknown layer policy {policy!r}; expected one of {LAYER_POLICIES}")


def fourier_features(values: torch.Tensor, dim: int = ADM_FEATURE_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """SGM's timestep embedding of each scalar: [cos(v·f), sin(v·f)], f = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def make_sdxl_adm(
    pooled: torch.Tensor,
    width: int,
    height: int,
    crop: tuple[int, int] = (0, 0),
    target: tuple[int, int] | None = None,
    aesthetic: float | None = None,
) -> torch.Tensor:
    """SDXL's `y`: pooled [B, 1280] + 256-d features of (height, width), crop (top, left) and then
    target (height, width) for the base (2816), or the aesthetic score for the refiner (2560,
    when `aesthetic` is given). `target` is (width, height) and defaults to the image size; A1111
    passes the generation size for both original and target size."""
    values = [height, width, crop[0], crop[1]]
    if aesthetic is None:
        target_w, target_h = target or (width, height)
        values += [target_h, target_w]
    else:
        values += [aesthetic]
    features = fourier_features(torch.tensor(values, dtype=torch.float32, device=pooled.device)).reshape(1, -1)
    return torch.cat([pooled, features.to(pooled.dtype).expand(pooled.shape[0], -1)], dim=1)


@dataclass(frozen=True)
class AdmParams:
    """Size conditioning for SDXL (A1111: width/height of the job, sdxl_crop_top/left, refiner score
    6.0 for positive and 2.5 for negative prompts)."""

    width: int = 1024
    height: int = 1024
    crop_top: int = 0
    crop_left: int = 0
    target_width: int | None = None
    target_height: int | None = None
    aesthetic_score: float = 6.0


# ---- the stack --------------------------------------------------------------------------------------

@dataclass
class TextEncoderUnit:
    """One encoder of a model, with what A1111 does differently per encoder."""

    model: TextEncoder
    role: str  # "clip_l", "clip_h" or "clip_g" (also the key into SDXL textual-inversion files)
    pad_id: int = EOS_ID  # EOS for OpenAI CLIP-L; 0 for OpenCLIP encoders
    layer_policy: str = "clip_skip"
    provides_pooled: bool = False  # SDXL: this encoder's projected EOS feature is the pooled vector


class TextEncoderStack:
    """The text side of a checkpoint: one or two encoders sharing CLIP's tokenizer."""

    def __init__(self, units: Sequence[TextEncoderUnit], tokenizer: CLIPTokenizer | None = None,
                 adm: str | None = None) -> None:
        if not units:
            raise ValueError("a text encoder stack needs at least one encoder")
        if adm not in (None, "sdxl", "refiner"):
            raise ValueError(f"unknown ADM kind {adm!r}; expected None, 'sdxl' or 'refiner'")
        if adm and not any(u.provides_pooled for u in units):
            raise ValueError("an SDXL-style stack needs one encoder that provides the pooled vector")
        self.units = list(units)
        self.tokenizer = tokenizer or default_tokenizer()
        self.adm = adm

    @property
    def context_dim(self) -> int:
        return sum(u.model.config.hidden_size for u in self.units)

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, Any], family: Any, plan: Any
    ) -> tuple["TextEncoderStack", set[str], list[str]]:
        """Build every encoder `family.text_encoders` names from a checkpoint, in `plan.text_dtype` on
        `plan.device`. Returns (stack, file keys used, file keys missing)."""
        units, used, missing = [], set(), []
        for slot in family.text_encoders:
            if not any(k.startswith(slot.prefix) for k in sd.keys()):
                raise WeightFileError(f"no {slot.role} text encoder in this file (nothing under {slot.prefix!r})")
            loaded = load_text_encoder(sd, slot.prefix, slot.layout, dtype=plan.text_dtype, device=plan.device,
                                       hidden_act=_ACT_BY_ROLE.get(slot.role))
            used |= loaded.used
            missing += loaded.missing
            if getattr(family, "sdxl_text", False):
                policy = "penultimate"
            else:
                policy = "penultimate_ln" if slot.role == "clip_h" else "clip_skip"
            units.append(TextEncoderUnit(
                loaded.model, slot.role, pad_id=EOS_ID if slot.pad_with_eos else 0, layer_policy=policy,
                provides_pooled=bool(getattr(family, "adm", None)) and slot.role == "clip_g",
            ))
        return cls(units, adm=getattr(family, "adm", None)), used, missing

    def chunks(self, parsed: Parsed, *, embeddings: EmbeddingLookup | None = None,
               comma_padding_backtrack: int = 20) -> tuple[list[PromptChunk], int]:
        return build_chunks(parsed, self.tokenizer, embeddings=embeddings,
                            comma_padding_backtrack=comma_padding_backtrack)

    def token_count(self, parsed: Parsed, *, embeddings: EmbeddingLookup | None = None,
                    comma_padding_backtrack: int = 20) -> tuple[int, int]:
        """(tokens used, capacity) for the UI's "N/75" counter."""
        _, count = self.chunks(parsed, embeddings=embeddings, comma_padding_backtrack=comma_padding_backtrack)
        return count, target_token_count(count)

    @torch.no_grad()
    def encode(
        self,
        parsed: Parsed,
        *,
        clip_skip: int = 1,
        emphasis: str = "Original",
        embeddings: EmbeddingLookup | None = None,
        comma_padding_backtrack: int = 20,
        sdxl_clip_l_skip: bool = False,
        adm: AdmParams | None = None,
        force_zero: bool = False,
    ) -> Conditioning:
        """One prompt → Conditioning with cross_attn [1, 77·chunks, context_dim]; SDXL stacks add
        pooled and the ADM vector. `force_zero` zeroes the text outputs (A1111 does so for an empty
        SDXL negative prompt) while the size features of `adm` stay. Emphasis maths runs in float32."""
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"unknown emphasis mode {emphasis!r}; expected one of {', '.join(EMPHASIS_MODES)}")
        chunks, count = self.chunks(parsed, embeddings=embeddings, comma_padding_backtrack=comma_padding_backtrack)
        outputs, pooled = [], None
        for unit in self.units:
            z, unit_pooled = self._encode_unit(unit, chunks, clip_skip, emphasis, sdxl_clip_l_skip)
            outputs.append(z)
            if unit.provides_pooled:
                pooled = unit_pooled
        cross_attn = torch.cat(outputs, dim=-1)
        if force_zero:
            cross_attn = torch.zeros_like(cross_attn)
            pooled = torch.zeros_like(pooled) if pooled is not None else None
        adm_vector = None
        if self.adm is not None and pooled is not None:
            p = adm or AdmParams()
            target = (p.target_width or p.width, p.target_height or p.height)
            adm_vector = make_sdxl_adm(pooled, p.width, p.height, (p.crop_top, p.crop_left), target,
                                       aesthetic=p.aesthetic_score if self.adm == "refiner" else None)
        used = sorted({emb.name for chunk in chunks for _, emb in chunk.fixes})
        extras = {"token_count": count, "chunks": len(chunks), "embeddings": tuple(used), "emphasis": emphasis}
        return Conditioning(cross_attn=cross_attn, pooled=pooled, adm=adm_vector, extras=extras)

    def _encode_unit(self, unit: TextEncoderUnit, chunks: list[PromptChunk], clip_skip: int, emphasis: str,
                     sdxl_clip_l_skip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All chunks in one batch; emphasis per chunk (A1111 normalises each chunk separately)."""
        model = unit.model
        device = model.token_embedding.weight.device
        rows = [c.tokens if unit.pad_id == EOS_ID else pad_after_first_eos(c.tokens, unit.pad_id) for c in chunks]
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        overrides: list[TokenOverride] = []
        for row, chunk in enumerate(chunks):
            for offset, embedding in chunk.fixes:
                vectors = embedding.vectors_for(unit.role)
                if vectors.shape[-1] != model.config.hidden_size:
                    raise ValueError(f"embedding {embedding.name!r} has {vectors.shape[-1]}-wide vectors; the "
                                     f"{unit.role} encoder needs {model.config.hidden_size}")
                overrides.append((row, offset + 1, vectors.to(device)))  # +1: BOS comes first
        out = model(ids, overrides)
        z = select_layer(model, out, unit.layer_policy, clip_skip,
                         sdxl_clip_l_skip=sdxl_clip_l_skip and unit.role == "clip_l").float()
        weights = torch.tensor([c.multipliers for c in chunks], dtype=torch.float32, device=device)
        z = torch.stack([apply_emphasis(z[i : i + 1], weights[i : i + 1], emphasis)[0] for i in range(len(chunks))])
        pooled = out.text_embeds[:1] if out.text_embeds is not None else None
        return z.reshape(1, -1, z.shape[-1]), pooled
