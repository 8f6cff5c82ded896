"""Prompt styles in A1111's `styles.csv` (columns name, prompt, negative_prompt).

A style is applied to the prompt boxes before a job is submitted, as A1111 does, so the infotext holds
the full prompt and the image reproduces without the styles file. No gradio here.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """A1111's rule: `{prompt}` in the style is replaced by the prompt, otherwise the style is appended."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class StyleDatabase:
    """Reads and writes one styles.csv; a missing file is an empty list."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> dict[str, Style]:
        if not self.path.is_file():
            return {}
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            rows = csv.DictReader(f)
            return {
                row["name"]: Style(row["name"], row.get("prompt") or "", row.get("negative_prompt") or "")
                for row in rows
                if row.get("name")
            }

    def names(self) -> list[str]:
        return list(self.load())

    def apply(self, names: list[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        """The prompts with each named style merged in, in order; unknown names are ignored."""
        styles = self.load()
        for name in names:
            style = styles.get(name)
            if style:
                prompt = merge_prompt(style.prompt, prompt) if style.prompt else prompt
                negative_prompt = merge_prompt(style.negative_prompt, negative_prompt) if style.negative_prompt else negative_prompt
        return prompt, negative_prompt

    def save(self, style: Style) -> None:
        """Add or replace a style; the file is rewritten through a temp file and a rename."""
        if not style.name.strip():
            raise ValueError("a style needs a name")
        with self._lock:
            styles = self.load()
            styles[style.name] = style
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["name", "prompt", "negative_prompt"])
            for s in styles.values():
                writer.writerow([s.name, s.prompt, s.negative_prompt])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".styles.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                    f.write(buf.getvalue())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
