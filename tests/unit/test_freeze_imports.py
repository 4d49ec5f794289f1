"""`kubetune operator` freezes the objects of its imports for the garbage collector before kopf starts
(kubetune.manager.freeze_imported_objects): full collections then walk only what the operator makes later."""

from __future__ import annotations

import gc
import logging

import pytest

from kubetune import manager
from kubetune.settings import load_settings


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    gc.disable()  # no automatic collection between a test's steps
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()  # the rest of the test session collects as usual
    gc.enable()


def test_the_operator_freezes_its_imports_before_kopf_runs(unfrozen, monkeypatch):
    # run_operator sets the levels of some loggers: they are put back after the test.
    for name in (
        "kopf.objects",
        "kopf.activities.probe",
        "kopf._core.engines.peering",
        "urllib3.connectionpool",
    ):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    frozen_when_kopf_starts = []
    monkeypatch.setattr(manager, "run_kopf", lambda *_: frozen_when_kopf_starts.append(gc.get_freeze_count()))
    # kubetune's handlers, kopf and the kubernetes client are imported: tens of thousands of objects at least.
    manager.run_operator(settings=load_settings(leader_elect=False, health_port=0))
    assert len(frozen_when_kopf_starts) == 1
    assert frozen_when_kopf_starts[0] > 10_000


def test_no_garbage_is_frozen(unfrozen):
    class Cycle:
        pass

    cycle = Cycle()
    cycle.me = cycle  # reference cycle: only the collector frees it
    del cycle
    assert any(type(o) is Cycle for o in gc.get_objects())
    assert manager.freeze_imported_objects() > 0
    # gc.get_objects() does not list frozen objects: unfrozen again, the cycle must be gone, not hidden.
    gc.unfreeze()
    assert not any(type(o) is Cycle for o in gc.get_objects())
