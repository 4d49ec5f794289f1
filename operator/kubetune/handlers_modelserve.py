"""kopf glue for ModelServe: watch ModelServes, the Deployments they own, and the FineTuneJobs they
reference, and put the ModelServe's key into its work queue (kubetune.runtime). The reconcile
(kubetune.reconcile.modelserve) does all the work.

A FineTuneJob event wakes the ModelServes that reference it (an in-memory index kept from ModelServe
events) only when what a ModelServe reads of it changed (``references.Readings``: its existence, spec,
phase, result). Trainer progress updates do not wake anything. The index is touched only by these handlers, on kopf's event loop.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune import runtime
from kubetune.reconcile.queue import event_priority
from kubetune.reconcile.references import ReferenceIndex
from kubetune.reconcile.sources import referenced_jobs
from kubetune.render.common import MODELSERVE_LABEL

log = logging.getLogger("kubetune.handlers.modelserve")


INDEX = ReferenceIndex(referenced_jobs)  # FineTuneJob name -> the ModelServes that reference it


@kopf.on.event("kubetune.io", "v1alpha1", "modelserves", id="modelserve-event")
async def modelserve_event(
    type: str | None, namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> None:
    if namespace and name:
        INDEX.note(namespace, name, None if type == "DELETED" else dict(body))
    runtime.object_event(runtime.MODELSERVE, "ModelServe", body, type)


@kopf.on.event(
    "apps", "v1", "deployments", labels={MODELSERVE_LABEL: kopf.PRESENT}, id="modelserve-deployment-event"
)
async def modelserve_deployment_event(body: kopf.Body, type: str | None = None, **_: Any) -> None:
    runtime.child_event(runtime.MODELSERVE, "Deployment", "ModelServe", body, type)


@kopf.on.event("kubetune.io", "v1alpha1", "finetunejobs", id="modelserve-finetunejob-event")
async def modelserve_finetunejob_event(
    type: str | None, namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> None:
    if not namespace or not name:
        return
    runtime.observed("FineTuneJob", body, type)  # kept once: the same version from two handlers
    for ms in INDEX.woken(namespace, name, None if type == "DELETED" else dict(body)):
        runtime.enqueue(runtime.MODELSERVE, namespace, ms, event_priority(type))
