"""Extra-network routes (`/sdapi/v1/loras`, `/embeddings`, refresh) and LoRA errors, on a real server.

The fake engine implements the Engine contract (cached scan of models/Lora and models/embeddings,
rescanned by `refresh_networks`), so these tests pin what the API does with it.
"""
from __future__ import annotations

import pytest
import torch

from tests.test_api import SMALL, field_of, serving
from tests.ui_fixtures import FakeEngine


@pytest.fixture
def served(tmp_path):
    lora_dir, emb_dir = tmp_path / "models" / "Lora", tmp_path / "models" / "embeddings"
    (lora_dir / "styles").mkdir(parents=True)
    emb_dir.mkdir(parents=True)
    (lora_dir / "styles" / "ink.safetensors").write_bytes(b"x")
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}, "step": 1200, "sd_checkpoint": "7460a6fa",
                "sd_checkpoint_name": "v1-5-pruned"}, emb_dir / "bad-hands.pt")
    with serving(FakeEngine(tmp_path), tmp_path, max_size=4) as served:
        yield served


def test_loras_in_a1111_shape_and_refresh_rescans(served):
    r = served.client.get("/sdapi/v1/loras")
    assert r.status_code == 200
    path = served.engine.root / "models" / "Lora" / "styles" / "ink.safetensors"
    assert r.json() == [{"name": "ink", "alias": "ink-alias", "path": str(path),
                         "metadata": {"ss_output_name": "ink-alias"}}]
    (path.parent / "zebra.safetensors").write_bytes(b"x")
    assert [x["name"] for x in served.client.get("/sdapi/v1/loras").json()] == ["ink"]  # the engine's cached scan
    assert served.client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert [x["name"] for x in served.client.get("/sdapi/v1/loras").json()] == ["ink", "zebra"]


def test_embeddings_in_a1111_shape_and_refresh(served):
    r = served.client.get("/sdapi/v1/embeddings")
    assert r.json() == {"loaded": {"bad-hands": {"step": 1200, "sd_checkpoint": "7460a6fa",
                                                 "sd_checkpoint_name": "v1-5-pruned", "shape": 768, "vectors": 2}},
                        "skipped": {}}
    (served.engine.root / "models" / "embeddings" / "good.safetensors").write_bytes(b"x")
    assert served.client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    assert sorted(served.client.get("/sdapi/v1/embeddings").json()["loaded"]) == ["bad-hands", "good"]


def test_unknown_lora_is_422_naming_prompt_and_a_known_one_runs(served):
    r = served.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:nope:0.8>"})
    assert field_of(r) == "prompt" and "'nope' not found" in r.json()["detail"][0]["msg"]
    r = served.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:ink:0.8>"})
    assert r.status_code == 200, r.text


def test_routes_are_in_the_openapi_schema(served):
    paths = served.client.get("/palette/v1/openapi.json").json()["paths"]
    assert {"/sdapi/v1/loras", "/sdapi/v1/embeddings", "/sdapi/v1/refresh-loras", "/sdapi/v1/refresh-embeddings"} <= set(paths)
