"""Settings files, model folders and launch flags: what a user sees when things go wrong."""
import argparse
import json
import os

import pytest

from modules.config import Settings, load_settings, save_settings
from modules.launch_options import LaunchError, options_from_args, parse_credentials
from modules.paths import ModelPaths, UnsafePathError, safe_join


def test_settings_round_trip_and_atomic_save(tmp_path):
    path = tmp_path / "config.json"
    save_settings(Settings(CLIP_stop_at_last_layers=2, emphasis="No norm"), path)
    loaded = load_settings(path)
    assert loaded.notice is None and loaded.settings.CLIP_stop_at_last_layers == 2
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".config.json")]  # no temp file left


def test_corrupt_settings_are_moved_aside_with_a_notice(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{broken")
    loaded = load_settings(path)
    assert loaded.settings == Settings()
    assert "config.json was unreadable" in loaded.notice
    aside = [p for p in os.listdir(tmp_path) if p.startswith("config.json.corrupt-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_text() == "{broken"


def test_override_settings_unknown_key_named():
    with pytest.raises(ValueError, match="unknown option\\(s\\) not_a_setting"):
        Settings().with_overrides({"not_a_setting": 1})
    assert Settings().with_overrides({"CLIP_stop_at_last_layers": 2}).CLIP_stop_at_last_layers == 2


def test_unknown_keys_in_config_file_are_ignored(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"sd_vae": "None", "from_a1111": True}))
    assert load_settings(path).settings.sd_vae == "None"


def test_safe_join_refuses_escapes(tmp_path):
    (tmp_path / "a").mkdir()
    assert safe_join(tmp_path, "a/x.png") == (tmp_path / "a" / "x.png").resolve()
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x", "", "a\x00b"):
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad)


def test_symlink_escape_refused(tmp_path):
    (tmp_path / "root").mkdir()
    os.symlink("/etc", tmp_path / "root" / "link")
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path / "root", "link/passwd")


def test_model_folders_a1111_names_and_overrides(tmp_path):
    paths = ModelPaths.create(tmp_path, lora_dir=tmp_path / "elsewhere")
    assert paths.folder("checkpoints") == tmp_path / "models" / "Stable-diffusion"
    assert paths.folder("lora") == tmp_path / "elsewhere"
    assert paths.folders("embeddings") == [tmp_path / "models" / "embeddings", tmp_path / "embeddings"]
    paths.ensure()
    (tmp_path / "models" / "Stable-diffusion" / "sub").mkdir()
    for name in ("b.safetensors", "sub/A.ckpt", "notes.txt"):
        (tmp_path / "models" / "Stable-diffusion" / name).write_bytes(b"")
    found = [p.name for p in paths.list_files("checkpoints", (".safetensors", ".ckpt"))]
    assert found == ["b.safetensors", "A.ckpt"]


def _args(**kw):
    from launch import build_parser

    return build_parser().parse_args([f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
                                      for k, v in kw.items()])


def test_share_without_auth_is_refused(tmp_path):
    with pytest.raises(LaunchError, match="--share without --gradio-auth"):
        options_from_args(_args(share=True, data_dir=tmp_path), root=tmp_path)
    opts = options_from_args(_args(share=True, insecure=True, data_dir=tmp_path), root=tmp_path)
    assert any("WITHOUT a password" in w for w in opts.warnings)


def test_listen_warns_loudly_without_auth_and_not_with_it(tmp_path):
    opts = options_from_args(_args(listen=True, data_dir=tmp_path), root=tmp_path)
    assert opts.host == "0.0.0.0" and any("WITHOUT a password" in w for w in opts.warnings)
    opts = options_from_args(_args(listen=True, gradio_auth="u:p", data_dir=tmp_path), root=tmp_path)
    assert opts.warnings == () and opts.auth == (("u", "p"),)
    assert options_from_args(_args(data_dir=tmp_path), root=tmp_path).host == "127.0.0.1"


def test_credentials_parsing(tmp_path):
    f = tmp_path / "auth.txt"
    f.write_text("c:d\n\ne:f:g\n")
    assert parse_credentials("a:b", str(f)) == (("a", "b"), ("c", "d"), ("e", "f:g"))
    with pytest.raises(LaunchError, match="user:password"):
        parse_credentials("nopassword")


def test_within_resolves_symlinks_and_roots(tmp_path):
    from modules.paths import within

    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "other", tmp_path / "root" / "out")
    os.symlink(tmp_path / "root" / "sub", tmp_path / "alias")  # a root named through a symlink
    assert within(tmp_path / "root" / "sub" / "x.png", [tmp_path / "root"])
    assert within(tmp_path / "root", [tmp_path / "root"])
    assert not within(tmp_path / "root" / "out" / "x.png", [tmp_path / "root"])
    assert not within(tmp_path / "root" / ".." / "other", [tmp_path / "root"])
    assert within(tmp_path / "root" / "sub" / "y", [tmp_path / "nowhere", tmp_path / "alias"])
    assert not within(tmp_path / "rootx", [tmp_path / "root"])  # a name prefix is not containment
