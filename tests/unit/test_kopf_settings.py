"""kopf's settings as the operator's startup handler sets them (kubetune.handlers.configure_kopf)."""

from __future__ import annotations

import warnings

import kopf

from kubetune.handlers import NoDiffBase, configure_kopf


def test_kopf_settings_use_no_deprecated_names():
    settings = kopf.OperatorSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kopf warns on its renamed settings (e.g. batching -> queueing)
        configure_kopf(settings)
    assert settings.queueing.error_delays == [1, 2, 5, 10, 30, 60]


def test_kopf_workers_let_go_of_bodies_soon():
    # kopf's per-object worker keeps the last body it handled until it has been idle this long: a restart
    # lists every object at once, so the default (5 s) held all of them together (docs/benchmarks.md).
    settings = kopf.OperatorSettings()
    assert settings.queueing.idle_timeout == 5.0  # kopf's default, which configure_kopf must lower
    configure_kopf(settings)
    assert 0 < settings.queueing.idle_timeout <= 1.0
    assert settings.watching.chunk_size == 100  # the initial LIST in pages
    assert settings.posting.enabled is False  # the reconcile writes its own Events


def test_kopf_keeps_no_diff_base_and_no_handler_needs_one():
    """kopf's per-event copy of the whole object (the diff base of its change-detecting handlers) is
    skipped (handlers.NoDiffBase). That is right only while no handler detects changes: create, update,
    resume, delete, field handlers, daemons and timers all read the diff base; a new one fails here."""
    import kubetune.manager  # noqa: F401 - registers the handlers of both kinds with kopf

    registry = kopf.get_default_registry()
    assert registry._watching.get_all_handlers(), "the event handlers are registered"
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"metadata": {"name": "x", "managedFields": [{"manager": "m"}]}, "spec": {"a": 1}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
