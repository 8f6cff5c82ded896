"""Command-line flags → a frozen LaunchOptions value, with the security rules applied.

`--listen` or `--share` without authentication print a loud warning; `--share` without auth is refused
unless `--insecure` is given, because a share link puts the machine's GPU (and files) on the internet.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from modules.devices import DevicePlan, plan_devices
from modules.paths import ModelPaths

LOUD = "!" * 78


class LaunchError(ValueError):
    """A flag combination Palette refuses to start with."""


def parse_credentials(text: str | None, path: str | None = None) -> tuple[tuple[str, str], ...]:
    """`user:pass,user2:pass2` (and/or one per line in a file) → ((user, pass), …)."""
    items: list[str] = []
    if text:
        items += text.split(",")
    if path:
        items += Path(path).read_text(encoding="utf-8").replace(",", "\n").splitlines()
    creds = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise LaunchError(f"credentials must look like user:password, got {item.split(':')[0]!r}:…")
        creds.append((user, password))
    return tuple(creds)


@dataclass(frozen=True)
class LaunchOptions:
    host: str
    port: int
    share: bool
    auth: tuple[tuple[str, str], ...]
    api: bool
    api_auth: tuple[tuple[str, str], ...]
    nowebui: bool
    skip_load_model_at_start: bool
    paths: ModelPaths
    data_dir: Path
    device_plan: DevicePlan
    warnings: tuple[str, ...] = field(default=())

    @property
    def is_local(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") and not self.share


def options_from_args(args: argparse.Namespace, *, root: Path) -> LaunchOptions:
    auth = parse_credentials(args.gradio_auth, args.gradio_auth_path)
    api_auth = parse_credentials(args.api_auth)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    warnings = []
    if args.share and not auth and not args.insecure:
        raise LaunchError(
            "--share without --gradio-auth would put this machine on the public internet with no password. "
            "Add --gradio-auth user:password, or --insecure if you really mean it."
        )
    exposed = host not in ("127.0.0.1", "localhost", "::1") or args.share
    if exposed and not auth:
        warnings.append(
            f"{LOUD}\nWARNING: Palette is reachable from other machines ({'share link' if args.share else host}) "
            f"WITHOUT a password.\nAnyone who can reach it can generate images and read your outputs. "
            f"Use --gradio-auth user:password.\n{LOUD}"
        )
    if (args.api or args.nowebui) and exposed and not api_auth:
        warnings.append("WARNING: the REST API is exposed without --api-auth.")
    data_dir = Path(args.data_dir).resolve()
    paths = ModelPaths.create(
        data_dir,
        Path(args.models_dir) if args.models_dir else None,
        ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None,
        vae_dir=Path(args.vae_dir) if args.vae_dir else None,
        lora_dir=Path(args.lora_dir) if args.lora_dir else None,
        embeddings_dir=Path(args.embeddings_dir) if args.embeddings_dir else None,
    )
    plan = plan_devices(
        use_cpu=args.use_cpu, precision=args.precision or "auto", no_half=args.no_half, no_half_vae=args.no_half_vae
    )
    return LaunchOptions(
        host=host,
        port=args.port,
        share=args.share,
        auth=auth,
        api=args.api or args.nowebui,
        api_auth=api_auth,
        nowebui=args.nowebui,
        skip_load_model_at_start=args.skip_load_model_at_start,
        paths=paths,
        data_dir=data_dir,
        device_plan=plan,
        warnings=tuple(warnings),
    )
