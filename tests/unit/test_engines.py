"""The serving engine registry (kubetune/engines/): one module per engine, and the API reads the same table."""

from __future__ import annotations

import typing

import pytest

from kubetune.api.v1alpha1 import ModelServe, ModelServeSpec
from kubetune.engines import ENGINES, engine_of
from kubetune.engines.base import Engine, Placement, Sources
from kubetune.settings import Settings

from .helpers import modelserve


def test_the_api_offers_exactly_the_registered_engines():
    engine_field = ModelServeSpec.model_fields["engine"]
    assert set(typing.get_args(engine_field.annotation)) == set(ENGINES)
    assert engine_field.default in ENGINES


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_each_engine_declares_its_settings_image_and_protocols(name):
    engine = ENGINES[name]
    assert isinstance(engine, Engine) and engine.name == name
    # its settings in the API are spec.<name>, of the model the engine names
    assert ModelServeSpec.model_fields[name].annotation is engine.settings_model
    # the operator's default image for it is the one the engine declares (until a setting overrides it)
    assert getattr(Settings(), f"{name}_image") == engine.default_image
    assert engine.smoke_protocol in ("tgi", "openai")
    ms = ModelServe.model_validate({**modelserve("bot", engine=name), "metadata": {"name": "bot"}})
    assert engine_of(ms) is engine
    container = engine.container(ms, Placement(model="/m"), "img:1")
    assert container["name"] == engine.container_name and container["image"] == "img:1"
    assert [p["containerPort"] for p in container["ports"]] == [engine.port]
    # what a rollout depends on changes with the image
    sources = Sources()
    assert engine.revision_inputs(ms, sources, "a") != engine.revision_inputs(ms, sources, "b")


def test_only_engines_with_live_adapters_plan_them():
    assert ENGINES["vllm"].live_adapters is not None and ENGINES["tgi"].live_adapters is None
    ops = ENGINES["vllm"].live_adapters
    # Never in place (engines/vllm.py: vLLM would read the path again at every batch).
    assert ops.load_request("a", "/p") == ("/load_lora_adapter", {"lora_name": "a", "lora_path": "/p"})
    assert ops.unload_request("a") == ("/unload_lora_adapter", {"lora_name": "a"})
    models = [{"id": "bot", "root": "/m"}, {"id": "a", "root": "/p", "parent": "bot"}]
    assert ops.loaded(models) == {"a": "/p"}
