"""The operator's startup handler freezes the objects of the startup for the garbage collector
(kubetune.handlers.freeze_startup_objects): full collections then walk only what the reconciles make."""

from __future__ import annotations

import asyncio
import gc

import kopf
import pytest

from kubetune import handlers, runtime
from kubetune.settings import load_settings


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    gc.disable()  # no automatic collection between a test's steps
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()  # the rest of the test session collects as usual
    gc.enable()


def test_startup_freezes_what_lives_then(unfrozen, monkeypatch):
    started = []

    async def start(cfg):  # the runtime's start needs a cluster; the freeze comes after it
        started.append(cfg)

    monkeypatch.setattr(runtime, "start", start)
    # It adds a filter to the root logger's handlers: pytest's, here.
    monkeypatch.setattr(handlers, "lower_throttled_retries", lambda: None)
    cfg = load_settings(metrics_port=0)
    asyncio.run(handlers.startup(settings=kopf.OperatorSettings(), memo=kopf.Memo(settings=cfg)))
    assert started == [cfg]
    # Every module imported by this test session is at least as many objects as kubetune's own.
    assert gc.get_freeze_count() > 10_000


def test_no_garbage_is_frozen(unfrozen):
    class Cycle:
        pass

    cycle = Cycle()
    cycle.me = cycle  # reference cycle: only the collector frees it
    del cycle
    assert any(type(o) is Cycle for o in gc.get_objects())
    assert handlers.freeze_startup_objects() > 0
    # gc.get_objects() does not list frozen objects: unfrozen again, the cycle must be gone, not hidden.
    gc.unfreeze()
    assert not any(type(o) is Cycle for o in gc.get_objects())
