"""Extra networks on disk (LoRAs, textual-inversion embeddings): listing, and what one job needs.

`NetworkRegistry` lives on the Engine. It lists `models/Lora` (+ `models/LyCORIS`) and
`models/embeddings` (+ `<root>/embeddings`) as `NetworkEntry`s for the UI and the API (header-only
reads, hashes only when already known), keeps opened LoRA files and loaded embeddings by file
stat, and `prepare_job` turns a request's `<lora:…>` tags and the model into patched clones of the
bundle's patchers plus the embedding lookup, the infotext's `Lora hashes` / `TI hashes` and the
job's report (`lora_skipped_keys`, `skipped_embeddings`).
"""
from __future__ import annotations

import difflib
import logging
import threading
import weakref
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from modules import embeddings as emb
from modules.infotext import format_hashes
from modules.lora import AppliedLoras, LoraFile, apply_loras, family_mismatch, lora_family, open_lora
from modules.lora_keys import KeyMap
from modules.paths import ModelPaths
from modules.prompts import LORA_KINDS, lora_ref, parse_extra_networks
from modules.text_encoding import EmbeddingTable, TextualInversion
from modules.types import GenerationRequest, LoraRef, NetworkEntry
from modules.validation import RequestError
from modules.weights_io import SafetensorsFile, WeightFileError, stat_key

log = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
PREVIEW_SUFFIXES = (".png", ".preview.png", ".jpg", ".jpeg", ".preview.jpg", ".preview.jpeg", ".webp", ".preview.webp")
METADATA_MAX_KEYS = 200
METADATA_MAX_CHARS = 4096
OPEN_LORAS_KEPT = 16


def find_preview(path: Path) -> Path | None:
    """An image beside the file, as A1111 looks for it: name.png, name.preview.png, .jpg, .webp."""
    base = path.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = base.parent / (base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def sanitize_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """kohya's `ss_*` training fields as plain strings: control characters dropped, lengths capped."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.startswith("ss_") or len(out) >= METADATA_MAX_KEYS:
            continue
        text = "".join(c for c in str(value) if c >= " " or c in "\n\t")
        out[key[:128]] = text if len(text) <= METADATA_MAX_CHARS else text[: METADATA_MAX_CHARS - 1] + "…"
    return out


def _is_hex_hash(value: Any) -> bool:
    text = str(value or "")
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


@dataclass
class _Cached:
    stat: tuple[str, int, int]
    value: Any


@dataclass(frozen=True)
class _Listing:
    """One scan of a kind's folders: the entries, and for embeddings the vectors by trigger word."""

    stamp: Any  # what the scan was valid for (embeddings: the folders' mtimes); None: until refresh()
    entries: tuple[NetworkEntry, ...]
    lookup: Mapping[str, tuple[Path, TextualInversion]] = field(default_factory=dict)


class NetworkRegistry:
    """LoRA and embedding files of one installation; safe to call from any thread.

    Files are read outside `_lock` (unpickling a .pt LoRA can take seconds) and the results swapped
    in under it, so the UI's listing never blocks the worker's lookups, nor the other way round."""

    def __init__(self, paths: ModelPaths, hashes: Any) -> None:
        self.paths = paths
        self.hashes = hashes
        self._lock = threading.RLock()
        self._listings: dict[str, _Listing] = {}
        self._generation = 0  # bumped by refresh(): a scan started before it is not kept
        self._entry_cache: dict[Path, _Cached] = {}
        self._open: OrderedDict[tuple[str, int, int], LoraFile] = OrderedDict()
        self._vectors: dict[Path, _Cached] = {}
        self._keymaps: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], KeyMap]] = weakref.WeakKeyDictionary()

    # ---- listing --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget the listings; the next call rescans the folders."""
        with self._lock:
            self._listings.clear()
            self._generation += 1

    def list_loras(self) -> list[NetworkEntry]:
        return [self._with_known_hash(e, addnet=e.path.suffix.lower() == ".safetensors")
                for e in self._listing("lora").entries]

    def list_embeddings(self) -> list[NetworkEntry]:
        return [self._with_known_hash(e, addnet=False) for e in self._listing("embeddings").entries]

    def _folder_stamp(self, kind: str) -> Any:
        """Embeddings are rescanned when a folder's mtime moves (a file added, removed or replaced), as
        A1111 does before each generation; LoRAs only on refresh() (and on a name not found)."""
        if kind != "embeddings":
            return None
        stamp = []
        for folder in self.paths.folders(kind):
            try:
                stamp.append((str(folder), folder.stat().st_mtime_ns))
            except OSError:
                stamp.append((str(folder), None))
        return tuple(stamp)

    def _listing(self, kind: str) -> _Listing:
        """The cached scan of a kind; a missing or stale one is built without holding the lock."""
        stamp = self._folder_stamp(kind)
        with self._lock:
            cached, generation = self._listings.get(kind), self._generation
        if cached is not None and cached.stamp == stamp:
            return cached
        if kind == "lora":
            listing = _Listing(stamp, tuple(self._scan(self.paths.list_files("lora", LORA_EXTENSIONS), self._lora_entry)))
        else:
            listing = self._scan_embeddings(stamp)
        with self._lock:
            if self._generation == generation:
                self._listings[kind] = listing
        return listing

    def _scan_embeddings(self, stamp: Any) -> _Listing:
        entries = self._scan(self.paths.list_files("embeddings", emb.EMBEDDING_EXTENSIONS), self._embedding_entry)
        lookup: dict[str, tuple[Path, TextualInversion]] = {}
        for entry in entries:
            vectors, _ = self._load_embedding_details(entry.path)  # cached by the scan just done
            lookup.setdefault(vectors.name, (entry.path, vectors))
        return _Listing(stamp, tuple(entries), lookup)

    def _with_known_hash(self, entry: NetworkEntry, *, addnet: bool) -> NetworkEntry:
        """A hash computed since the listing (e.g. by a generation) shows up without a rescan."""
        if entry.hash:
            return entry
        known = self._known_hash(entry.path, addnet=addnet)
        return replace(entry, hash=known) if known else entry

    def _scan(self, files: Sequence[Path], make: Any) -> list[NetworkEntry]:
        entries, seen = [], set()
        for path in files:
            try:
                entry = make(path)
            except (OSError, WeightFileError) as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            if entry.name in seen:
                log.warning("%s: another file is already called %r; this one is reachable by its folder path",
                            path, entry.name)
            seen.add(entry.name)
            entries.append(entry)
        return entries

    def _cached(self, path: Path, build: Any) -> Any:
        stat = stat_key(path)
        with self._lock:
            hit = self._entry_cache.get(path)
        if hit is None or hit.stat != stat:
            hit = _Cached(stat, build(path))  # reads the file: not under the lock
            with self._lock:
                self._entry_cache[path] = hit
        return hit.value

    def _lora_entry(self, path: Path) -> NetworkEntry:
        def build(p: Path) -> NetworkEntry:
            metadata: dict[str, str] = {}
            family = None
            try:
                if p.suffix.lower() == ".safetensors":
                    header = SafetensorsFile(p)  # header only
                    metadata = dict(header.metadata)
                    family = lora_family(header, metadata)
                else:
                    family = lora_family(open_lora(p).tensors)
            except WeightFileError as exc:
                log.warning("LoRA %s: %s", p.name, exc)
            known = metadata.get("sshs_model_hash")
            return NetworkEntry(p.stem, "lora", p, family, known[:12] if _is_hex_hash(known) else None, None,
                                sanitize_metadata(metadata))

        entry = self._cached(path, build)
        cached_hash = entry.hash or self._known_hash(path, addnet=path.suffix.lower() == ".safetensors")
        return NetworkEntry(entry.name, entry.kind, entry.path, entry.family, cached_hash, find_preview(path), entry.metadata)

    def _embedding_entry(self, path: Path) -> NetworkEntry:
        """The file is read once per version (the vectors are cached for generation too); the metadata
        holds A1111's listed fields (`vectors`, `shape`, `step`, `sd_checkpoint`, `sd_checkpoint_name`)."""
        vectors, details = self._load_embedding_details(path)
        family = emb.embedding_family(vectors)
        return NetworkEntry(path.stem, "embedding", path, family, self._known_hash(path, addnet=False), find_preview(path),
                            details)

    def _known_hash(self, path: Path, *, addnet: bool) -> str | None:
        digest = self.hashes.sha256(path, compute=False, addnet=addnet) if self.hashes else None
        return digest[:12] if digest else None

    # ---- hashes ---------------------------------------------------------------------------------
    def lora_hash(self, entry: NetworkEntry) -> str:
        """A1111's short LoRA hash: kohya's `sshs_model_hash`, else the addnet hash (sha256 of the
        safetensors data after the header), else the file's sha256; 12 hex digits."""
        if entry.hash:
            return entry.hash
        if self.hashes is None:
            return ""
        digest = self.hashes.sha256(entry.path, addnet=entry.path.suffix.lower() == ".safetensors")
        return (digest or "")[:12]

    def embedding_hash(self, path: Path) -> str:
        """A1111's TI hash: the file's sha256, 12 hex digits."""
        return (self.hashes.sha256(path) or "")[:12] if self.hashes else ""

    # ---- lookups --------------------------------------------------------------------------------
    def find_lora(self, name: str) -> NetworkEntry | None:
        """By file stem, by folder path without extension (`sub/name`), then by kohya's output name."""
        for attempt in range(2):
            entries = self.list_loras()
            for entry in entries:
                if entry.name == name:
                    return entry
            for entry in entries:
                if self._relative(entry) == name.replace("\\", "/"):
                    return entry
            aliases = [e for e in entries if e.metadata.get("ss_output_name") == name]
            if len(aliases) == 1:
                return aliases[0]
            if attempt == 0:
                self.refresh()  # a file added since the last listing (A1111 rescans too)
        return None

    def _relative(self, entry: NetworkEntry) -> str:
        for folder in self.paths.folders("lora"):
            if folder in entry.path.parents:
                return entry.path.relative_to(folder).with_suffix("").as_posix()
        return entry.name

    def unknown_lora(self, name: str) -> RequestError:
        names = [e.name for e in self.list_loras()]
        if not names:
            folder = self.paths.folder("lora")
            return RequestError("prompt", f"unknown LoRA '{name}'; no LoRA files found in {folder}")
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4) or sorted(names, key=str.lower)[:3]
        return RequestError("prompt", f"unknown LoRA '{name}'; did you mean: {', '.join(close)}?")

    def open(self, entry: NetworkEntry) -> LoraFile:
        stat = stat_key(entry.path)
        with self._lock:
            if stat in self._open:
                self._open.move_to_end(stat)
                return self._open[stat]
        lora = open_lora(entry.path, entry.name)  # may unpickle a .pt: not under the lock
        with self._lock:
            self._open[stat] = lora
            while len(self._open) > OPEN_LORAS_KEPT:
                self._open.popitem(last=False)
        return lora

    def keymap(self, bundle: Any) -> KeyMap:
        """The name map of a loaded model, built once per model."""
        texts = tuple(id(unit.model) for unit in bundle.text.units)
        with self._lock:
            hit = self._keymaps.get(bundle.unet.model)
            if hit is None or hit[0] != texts:
                hit = (texts, KeyMap(bundle.unet.model, [unit.model for unit in bundle.text.units]))
                self._keymaps[bundle.unet.model] = hit
            return hit[1]

    # ---- embeddings -----------------------------------------------------------------------------
    def _load_embedding_details(self, path: Path) -> tuple[TextualInversion, dict[str, str]]:
        stat = stat_key(path)
        with self._lock:
            hit = self._vectors.get(path)
        if hit is None or hit.stat != stat:
            try:
                hit = _Cached(stat, emb.read_embedding_details(path))  # not under the lock
            except WeightFileError as exc:
                hit = _Cached(stat, exc)
            with self._lock:
                self._vectors[path] = hit
        if isinstance(hit.value, Exception):
            raise hit.value
        return hit.value

    def embeddings(self) -> dict[str, tuple[Path, TextualInversion]]:
        """Every readable embedding by trigger word (first file wins), from the cached scan: rescanned
        when an embeddings folder changes (a new file works without a restart, as in A1111) or on
        refresh(); otherwise no file is read or stat()ed (token counting calls this on every keystroke)."""
        return dict(self._listing("embeddings").lookup)

    def embedding_lookup(self, stack: Any) -> tuple[emb.RecordingLookup, list[str], dict[str, Path]]:
        """(lookup of the embeddings this text stack can use, names skipped for width, paths by name)."""
        found = self.embeddings()
        usable, skipped = emb.split_by_fit([v for _, v in found.values()], emb.encoder_widths(stack))
        table = EmbeddingTable(stack.tokenizer, usable)
        return emb.RecordingLookup(table), sorted(e.name for e in skipped), {n: p for n, (p, _) in found.items()}


# ---- one job ------------------------------------------------------------------------------------

def parse_loras(prompt: str) -> tuple[list[LoraRef], list[str]]:
    """The `<lora:…>` / `<lyco:…>` tags of a prompt and the other extra-network tags it holds
    (which Palette does not support; A1111 skips unknown kinds too). Bad numbers are RequestErrors."""
    _, networks = parse_extra_networks(prompt)
    refs, others = [], []
    for kind, found in networks.items():
        for params in found:
            if kind in LORA_KINDS:
                try:
                    refs.append(lora_ref(params, kind))
                except ValueError as exc:
                    raise RequestError("prompt", str(exc)) from None
            else:
                others.append(f"<{kind}:{':'.join(params.items)}>")
    return refs, others


def _hires_prompt(request: GenerationRequest) -> str | None:
    if request.enable_hr and not request.is_img2img and request.hr_prompt:
        return request.hr_prompt
    return None


def check_request(registry: NetworkRegistry | None, request: GenerationRequest) -> None:
    """Refuse unknown LoRA names and bad tags before any model is loaded."""
    for prompt in filter(None, (request.prompt, _hires_prompt(request))):
        refs, _ = parse_loras(prompt)
        for ref in refs:
            if registry is None:
                raise RequestError("prompt", f"unknown LoRA '{ref.name}'; no LoRA folder is configured")
            if registry.find_lora(ref.name) is None:
                raise registry.unknown_lora(ref.name)


@dataclass
class JobNetworks:
    """The networks of one job: the bundle with patched clones, the embedding lookup, and reports."""

    bundle: Any
    embeddings: emb.RecordingLookup | None = None
    lora_hashes: dict[str, str] = field(default_factory=dict)
    skipped_keys: dict[str, int] = field(default_factory=dict)
    skipped_embeddings: tuple[str, ...] = ()
    ignored_tags: tuple[str, ...] = ()
    embedding_paths: Mapping[str, Path] = field(default_factory=dict)
    registry: NetworkRegistry | None = None
    hires: "JobNetworks | None" = None  # the hires pass's own LoRAs, when its prompt names others

    @property
    def for_hires(self) -> "JobNetworks":
        return self.hires or self

    @contextmanager
    def text_applied(self) -> Iterator[None]:
        """The text encoders' LoRA patches on for the block (e.g. while prompts are encoded)."""
        with ExitStack() as stack:
            for patcher in self.bundle.text_patchers:
                if patcher.is_patched:
                    stack.enter_context(patcher.applied())
            yield

    def infotext_params(self) -> dict[str, str]:
        """`Lora hashes` and `TI hashes` as A1111 writes them (only what the prompts used)."""
        loras = dict(self.lora_hashes)
        if self.hires is not None:
            loras.update(self.hires.lora_hashes)
        out = {}
        loras = {name: h for name, h in loras.items() if h}
        if loras:
            out["Lora hashes"] = format_hashes(loras)
        used = sorted(self.embeddings.used) if self.embeddings is not None else []
        if used and self.registry is not None:
            hashes = {name: self.registry.embedding_hash(self.embedding_paths[name]) for name in used
                      if name in self.embedding_paths}
            hashes = {name: h for name, h in hashes.items() if h}
            if hashes:
                out["TI hashes"] = format_hashes(hashes)
        return out

    def info(self) -> dict[str, Any]:
        skipped = dict(self.skipped_keys)
        if self.hires is not None:
            for name, count in self.hires.skipped_keys.items():
                skipped[name] = max(skipped.get(name, 0), count)
        out: dict[str, Any] = {"lora_skipped_keys": skipped, "skipped_embeddings": list(self.skipped_embeddings)}
        if self.embeddings is not None:
            out["used_embeddings"] = sorted(self.embeddings.used)
        if self.ignored_tags:
            out["ignored_network_tags"] = list(self.ignored_tags)
        return out


def _patched(registry: NetworkRegistry | None, bundle: Any, refs: Sequence[LoraRef]) -> tuple[AppliedLoras, dict[str, str]]:
    if not refs:
        return AppliedLoras(bundle, {}, {}), {}
    if registry is None:
        raise RequestError("prompt", f"unknown LoRA '{refs[0].name}'; no LoRA folder is configured")
    pairs, hashes = [], {}
    for ref in refs:
        entry = registry.find_lora(ref.name)
        if entry is None:
            raise registry.unknown_lora(ref.name)
        try:
            lora = registry.open(entry)
        except WeightFileError as exc:
            raise RequestError("prompt", f"LoRA '{ref.name}' cannot be read: {exc}") from None
        reason = family_mismatch(lora, bundle.family, ref.name)
        if reason:
            raise RequestError("prompt", reason)
        pairs.append((ref, lora))
        hashes[ref.name] = registry.lora_hash(entry)
    return apply_loras(bundle, pairs, registry.keymap(bundle)), hashes


def prepare_job(registry: NetworkRegistry | None, bundle: Any, request: GenerationRequest) -> JobNetworks:
    """Parse the request's tags, check every LoRA against the model, and patch clones of its
    patchers; also the embedding lookup for the model's text encoders. Raises RequestError."""
    refs, ignored = parse_loras(request.prompt)
    applied, hashes = _patched(registry, bundle, refs)
    lookup, skipped, paths = registry.embedding_lookup(bundle.text) if registry is not None else (None, [], {})
    if ignored:
        log.warning("ignoring unsupported extra-network tags: %s", ", ".join(ignored))
    job = JobNetworks(applied.bundle, lookup, hashes, dict(applied.skipped_keys), tuple(skipped), tuple(ignored),
                      paths, registry)
    hires_prompt = _hires_prompt(request)
    if hires_prompt is not None:
        hires_refs, _ = parse_loras(hires_prompt)
        if hires_refs != refs:  # A1111 activates the hires prompt's own networks for the second pass
            hires_applied, hires_hashes = _patched(registry, bundle, hires_refs)
            job.hires = JobNetworks(hires_applied.bundle, lookup, hires_hashes, dict(hires_applied.skipped_keys),
                                    tuple(skipped), (), paths, registry)
    return job


def token_count(registry: NetworkRegistry | None, stack: Any, prompt: str, *, steps: int = 20,
                is_positive: bool = True, comma_padding_backtrack: int = 20) -> tuple[int, int]:
    """A1111's `N/75` counter: tags removed, AND parts and prompt-editing texts counted separately,
    the longest wins; embedding names count as their vectors."""
    from modules.prompts import get_multicond_prompt_list, parse_attention, schedules_for
    from modules.text_encoding import build_chunks, target_token_count
    from modules.tokenizer import default_tokenizer

    text, _ = parse_extra_networks(prompt)
    tokenizer = stack.tokenizer if stack is not None else default_tokenizer()
    table = None
    if registry is not None:
        found = [v for _, v in registry.embeddings().values()]
        if stack is not None:
            found, _ = emb.split_by_fit(found, emb.encoder_widths(stack))
        table = EmbeddingTable(tokenizer, found)
    try:
        flat = get_multicond_prompt_list([text])[1] if is_positive else [text]
        texts = [t for schedule in schedules_for(flat, max(int(steps), 1)) for _, t in schedule]
    except (ValueError, RecursionError):
        texts = [text]
    best = 0
    for item in texts or [""]:
        _, count = build_chunks(parse_attention(item), tokenizer, embeddings=table,
                                comma_padding_backtrack=comma_padding_backtrack)
        best = max(best, count)
    return best, target_token_count(best)

