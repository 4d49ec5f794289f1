"""A namespace with a FineTuneJob or ModelServe in every state of tests/gitops/states.py (written through
the status subresource of the real API server), plus one with a stale observedGeneration and one being
deleted per kind; built once per module."""

from __future__ import annotations

import pytest

from tests.support.crds import apply_crds

from . import states


@pytest.fixture(scope="module")
def world(kube):
    apply_crds(kube.api)
    ns = kube.new_namespace("gitops")
    objects = {}
    releases = []
    try:
        for name, (kind, builder) in states.STATES.items():
            objects[name] = states.create(kube.api, ns, kind, name, builder(1))
        for name, kind, builder in (("ftj-stale", "FineTuneJob", states.ftj_succeeded),
                                    ("ms-stale", "ModelServe", states.ms_ready)):  # fmt: skip
            states.create(kube.api, ns, kind, name, builder(1))
            objects[name] = states.bump_generation(kube.api, ns, kind, name)
        for name, kind, builder in (("ftj-deleting", "FineTuneJob", states.ftj_succeeded),
                                    ("ms-deleting", "ModelServe", states.ms_ready)):  # fmt: skip
            objects[name], release = states.deleting(kube.api, ns, kind, name, builder(1))
            releases.append(release)
        yield objects
    finally:
        for release in releases:
            release()
        kube.delete_namespace(ns)
