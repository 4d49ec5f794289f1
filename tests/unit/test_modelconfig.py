"""Reading config.json for the fit check (kubetune.modelconfig): local files, the Hugging Face cache, what the
operator does not read, and the operator's cache of reads (a burst of one model reads it once; an unreachable
Hub is asked again only after a while)."""

from __future__ import annotations

import json

import pytest

from kubetune.modelconfig import ConfigCache, ConfigUnavailable, read_file, read_hub, read_local
from tests.operator.test_fit_cluster import COMMIT, REPO_ID, hub_cache
from tests.unit.test_fit import LLAMA_8B


def test_local_files_and_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    assert read_file(tmp_path) == LLAMA_8B == read_local(f"file://{tmp_path}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigUnavailable, match="is not a JSON object"):
        read_file(tmp_path / "bad")
    with pytest.raises(ConfigUnavailable, match="cannot read .*missing"):
        read_file(tmp_path / "missing")


def test_pvc_and_s3_models_are_read_where_they_are_mounted():
    with pytest.raises(ConfigUnavailable, match="a pvc:// model's config.json is read where it is mounted"):
        read_local("pvc://models/llama")


def test_the_hugging_face_cache_is_read_without_the_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path)))
    assert read_hub(REPO_ID, "main", cached_only=True) == LLAMA_8B
    assert read_hub(REPO_ID, COMMIT, cached_only=True) == LLAMA_8B
    with pytest.raises(ConfigUnavailable, match="not in the local Hugging Face cache"):
        read_hub("someone/else", cached_only=True)


def test_the_operator_cache_reads_once_and_retries_failures_later(monkeypatch):
    import kubetune.modelconfig as modelconfig

    calls: list[str] = []

    def fake_hub(repo_id, revision=None, **_):
        calls.append(repo_id)
        if repo_id == "down/model":
            raise ConfigUnavailable("hf://down/model: cannot read config.json from the Hub: offline")
        return LLAMA_8B

    monkeypatch.setattr(modelconfig, "read_hub", fake_hub)
    now = [0.0]
    cache = ConfigCache(ttl=100, failure_ttl=10, nodes_ttl=5, clock=lambda: now[0])
    assert cache.config("hf://org/llama", "main") == (LLAMA_8B, None)
    assert cache.config("hf://org/llama", "main") == (LLAMA_8B, None)
    assert cache.config("hf://down/model", "main") == (
        None,
        "hf://down/model: cannot read config.json from the Hub: offline",
    )
    now[0] = 5
    cache.config("hf://down/model", "main")
    assert calls == ["org/llama", "down/model"]  # both answered from the cache
    now[0] = 11
    cache.config("hf://down/model", "main")
    assert calls == ["org/llama", "down/model", "down/model"]  # a failure is asked again after failure_ttl
    config, why = cache.config("pvc://models/llama", None)
    assert config is None and "the operator does not mount pvc:// models" in (why or "")
    listed = []
    assert cache.nodes(lambda: listed.append(1) or [{"metadata": {"name": "n"}}]) == [
        {"metadata": {"name": "n"}}
    ]
    cache.nodes(lambda: listed.append(1) or [])
    now[0] = 17
    assert cache.nodes(lambda: listed.append(1) or []) == []
    assert len(listed) == 2
