"""kopf glue for ModelServe: watch ModelServes, the Deployments they own, and the FineTuneJobs they
reference, and put the ModelServe's key into its work queue (kubetune.runtime). The reconcile
(kubetune.reconcile.modelserve) does all the work.

A FineTuneJob event wakes the ModelServes that reference it (an in-memory index kept from ModelServe
events) only when what a ModelServe reads of it changed: its result, phase, or existence. Trainer
progress updates do not wake anything. The index is touched only by these handlers, on kopf's event loop.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf

from kubetune import runtime
from kubetune.reconcile.queue import Key, event_priority
from kubetune.reconcile.references import ReferenceIndex
from kubetune.reconcile.sources import referenced_jobs
from kubetune.render.common import MODELSERVE_LABEL

log = logging.getLogger("kubetune.handlers.modelserve")


class JobReadings:
    """What ModelServes read of each FineTuneJob (result, phase, existence, uid), to tell whether an event
    of the job changed it."""

    def __init__(self) -> None:
        self._seen: dict[Key, str] = {}  # FineTuneJob key -> what ModelServes read of it, as JSON

    def changed(self, namespace: str, job: str, body: dict[str, Any] | None) -> bool:
        """Whether what a ModelServe reads of the job changed since its last event (BODY None: deleted)."""
        status = (body or {}).get("status") or {}
        seen = json.dumps(
            None
            if body is None
            else [status.get("result"), status.get("phase"), (body.get("metadata") or {}).get("uid")],
            sort_keys=True,
            default=str,
        )
        before = self._seen.get((namespace, job))
        if body is None:
            self._seen.pop((namespace, job), None)
        else:
            self._seen[(namespace, job)] = seen
        return before != seen


INDEX = ReferenceIndex(referenced_jobs)  # FineTuneJob name -> the ModelServes that reference it
READINGS = JobReadings()


@kopf.on.event("kubetune.io", "v1alpha1", "modelserves", id="modelserve-event")
async def modelserve_event(
    type: str | None, namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> None:
    if namespace and name:
        INDEX.note(namespace, name, None if type == "DELETED" else dict(body))
    runtime.enqueue(runtime.MODELSERVE, namespace, name, event_priority(type, body))


@kopf.on.event(
    "apps", "v1", "deployments", labels={MODELSERVE_LABEL: kopf.PRESENT}, id="modelserve-deployment-event"
)
async def modelserve_deployment_event(
    namespace: str | None, meta: kopf.Meta, type: str | None = None, **_: Any
) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "ModelServe" and ref.get("controller"):
            runtime.enqueue(runtime.MODELSERVE, namespace, ref.get("name"), event_priority(type))


@kopf.on.event("kubetune.io", "v1alpha1", "finetunejobs", id="modelserve-finetunejob-event")
async def modelserve_finetunejob_event(
    type: str | None, namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> None:
    if not namespace or not name:
        return
    if READINGS.changed(namespace, name, None if type == "DELETED" else dict(body)):
        for ms in INDEX.of(namespace, name):
            runtime.enqueue(runtime.MODELSERVE, namespace, ms, event_priority(type))
