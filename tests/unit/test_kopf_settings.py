"""kopf's settings as the operator's startup handler sets them (kubetune.handlers.configure_kopf)."""

from __future__ import annotations

import warnings

import kopf

from kubetune.handlers import configure_kopf


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
