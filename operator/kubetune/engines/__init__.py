"""The serving engines of ModelServe, one module each behind one interface (``base.Engine``), by the name
``spec.engine`` gives them. A new engine is a new module here plus its settings in the API (see
docs/architecture.md, "How to add an engine")."""

from kubetune.api.v1alpha1 import ModelServe

from .base import Engine
from .tgi import TGI
from .vllm import VLLM

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (TGI(), VLLM())}


def engine_of(ms: ModelServe) -> Engine:
    """The engine that serves MS."""
    return ENGINES[ms.spec.engine]


__all__ = ["ENGINES", "Engine", "engine_of"]
