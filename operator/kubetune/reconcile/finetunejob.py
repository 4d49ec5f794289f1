"""The FineTuneJob reconcile's I/O shell: read the object and what the decision asks for, call the pure
decision (``finetunejob_decision.decide``), make the writes, and feed refusals back into the decision.

Level-based: it never asks why it runs (create, update, a child's event, a timer, a restart); it only
looks at the world. Everything that must survive an operator restart lives in the cluster: the run id and
attempt are labels of the trainer Jobs (and the ConfigMap's run id), deadlines are computed from status
timestamps and the Jobs' creationTimestamps, conditions keep their lastTransitionTime.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import logging
import threading
import time
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from typing import Any

from kubetune import metrics_judge
from kubetune.api.fit import GpuMemory, gpu_memory_of_nodes
from kubetune.modelconfig import ConfigCache
from kubetune.render.common import FINETUNEJOB_LABEL, RUN_ID_LABEL, applied_hash
from kubetune.render.finetunejob import RenderOptions, configmap_name, job_name
from kubetune.render.finetunejob import _label_value as label_value

from . import chains
from .client import ApiException, Kube
from .clock import now, parse_time
from .finetunejob_decision import (
    REFUSAL_CODES,
    STATUS_FIELDS,
    Decision,
    Need,
    Observed,
    Refusal,
    decide,
)
from .own_writes import OwnWrites
from .writes import EventRecorder, write_status

log = logging.getLogger("kubetune.finetunejob")

CONTROLLER = "finetunejob"
STATIC_KINDS_RECHECK_SECONDS = 600.0
MAX_ROUNDS = 16  # decisions per reconcile (each extra read or refusal asks for one more); never reached


@dataclass
class Result:
    """What the caller (the work queue) does next."""

    requeue_after: float | None = None
    """Reconcile again after this many seconds (timers: deadlines, TTL, waiting for deletions)."""
    problem: bool = False
    """Something the user must fix: retry with exponential backoff until it is fixed."""
    phase: str | None = None
    job_created_after: float | None = None
    """Seconds from the FineTuneJob's creation to its first trainer Job (measured once)."""
    run_seconds: float | None = None
    """Duration of a run that finished in this reconcile."""


@dataclass
class AppliedCache:
    """What this process last applied per child (kind, namespace, name) -> (hash, run id, when). Lets a
    reconcile of an unchanged object skip the reads of its ConfigMap, Service and RBAC; entries older than
    ``max_age`` are re-checked against the cluster (drift repair)."""

    max_age: float = STATIC_KINDS_RECHECK_SECONDS
    entries: dict[tuple[str, str, str], tuple[str | None, str | None, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[str, str, str]) -> tuple[str | None, str | None] | None:
        with self.lock:
            entry = self.entries.get(key)
        if entry is None or time.monotonic() - entry[2] > self.max_age:
            return None
        return entry[0], entry[1]

    def put(self, key: tuple[str, str, str], digest: str | None, run: str | None) -> None:
        with self.lock:
            self.entries[key] = (digest, run, time.monotonic())


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _status_body(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def server_message(exc: ApiException) -> str:
    """The API server's own words for a refused request (its Status message), else the HTTP reason."""
    message = _status_body(exc).get("message")
    return str(message) if message else f"{exc.reason or 'refused'} {exc.body or ''}".strip()


def namespace_terminating(exc: ApiException) -> bool:
    """The write was refused because the namespace is being deleted (and the FineTuneJob with it)."""
    causes = (_status_body(exc).get("details") or {}).get("causes") or []
    return any(
        c.get("reason") == "NamespaceTerminating" or c.get("type") == "NamespaceTerminating" for c in causes
    )


class _NamespaceTerminating(Exception):
    """Raised by a write in a namespace being deleted: nothing to decide, nothing to retry."""


class FineTuneJobReconciler:
    """One reconcile of one FineTuneJob; ``reconcile`` is safe to call from several threads for different
    objects (the work queue never runs the same object twice at once)."""

    def __init__(
        self,
        kube: Kube,
        opts: RenderOptions,
        cache: AppliedCache | None = None,
        clock=now,
        events: EventRecorder | None = None,
        own_writes: OwnWrites | None = None,
        writers: Executor | None = None,
        fit_cache: ConfigCache | None = None,
    ):
        self.kube = kube
        self.fit_cache = fit_cache or ConfigCache()
        """config.json and GPU nodes read for the fit check (kept a while: kubetune.modelconfig)."""
        self.opts = opts
        self.cache = cache or AppliedCache()
        self.clock = clock
        self.events = events or EventRecorder(kube)
        self.own_writes = own_writes or OwnWrites()
        self.writers = writers
        """Threads for a reconcile's independent child applies (None: one after the other)."""

    def reconcile(self, namespace: str, name: str) -> Result:
        obj = self.kube.get("FineTuneJob", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Result()  # gone: garbage collection removes the children
        return _Shell(self, obj).run()


# Applied only once the other static children were: the API server checks a RoleBinding against the rules
# of the Role it names (RBAC's escalation check) unless the writer may `bind` that Role, which the chart's
# ClusterRole deliberately does not grant; a RoleBinding sent beside its Role is refused with a 404 while
# the Role does not exist yet (seen with the chart's RBAC in tests/reliability/test_control_plane_faults.py).
AFTER_THE_OTHER_CHILDREN = frozenset({"RoleBinding"})


def static_waves(objs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """OBJS (static children, in the decision's order) split into the waves they are applied in: first all
    that depend on nothing, then those of AFTER_THE_OTHER_CHILDREN; empty waves left out."""
    first = [o for o in objs if o["kind"] not in AFTER_THE_OTHER_CHILDREN]
    then = [o for o in objs if o["kind"] in AFTER_THE_OTHER_CHILDREN]
    return [wave for wave in (first, then) if wave]


class _Shell:
    """Reads and writes of one reconcile."""

    def __init__(self, r: FineTuneJobReconciler, obj: dict[str, Any]):
        self.r = r
        self.kube = r.kube
        self.obj = obj
        meta = obj["metadata"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.reconciled_before = bool((obj.get("status") or {}).get("observedGeneration"))
        self.done: set[tuple[str, str, str]] = set()  # writes made in this reconcile: (verb, kind, name)
        self.result = Result()

    def owned(self, child: dict[str, Any]) -> bool:
        return any(ref.get("uid") == self.uid for ref in child["metadata"].get("ownerReferences") or [])

    # ---------------------------------------------------------------------------------------------

    def run(self) -> Result:
        try:
            return self.converge()
        except _NamespaceTerminating:
            log.debug("%s/%s: the namespace is being deleted", self.ns, self.name)
            return Result()

    def converge(self) -> Result:
        at = self.r.clock()
        # The decision reads a copy: every round decides from the same starting point (self.obj's status
        # follows the writes, so a second status write compares with the first).
        cached = self.r.cache.get(("static", self.ns, self.name))
        observed = Observed(
            obj=copy.deepcopy(self.obj),
            jobs=self.current_job(),
            configmap_run=self.configmap_run(),
            static_signature=cached[0] if cached else None,
        )
        for _ in range(MAX_ROUNDS):
            d = decide(observed, self.r.opts, at)
            if d.need is not None:
                self.read_more(observed, d.need)
                continue
            if d.delete_self:
                self.r.events.emit(self.obj, d.events)
                self.kube.delete("FineTuneJob", self.ns, self.name, uid=self.uid)
                return Result()
            if d.status_first:
                self.write(d)
            refusal = self.execute(d)
            if refusal is not None:
                log.info(
                    "%s/%s: %s %s refused: %s",
                    self.ns,
                    self.name,
                    refusal.kind,
                    refusal.name,
                    refusal.message,
                )
                observed.refusals.append(refusal)
                continue
            break
        else:  # pragma: no cover - every round adds a read or a refusal, of which there are few
            raise RuntimeError(f"FineTuneJob {self.ns}/{self.name}: the decision did not settle")
        if d.static_signature is not None:
            self.r.cache.put(("static", self.ns, self.name), d.static_signature, None)
        # Events before the status: whoever sees the new status finds its Events (a failed status write
        # retries the pass, and the recorder drops the repeated Events).
        self.r.events.emit(self.obj, d.events)
        metrics_judge.count([e.reason for e in d.events])  # fit refusals, gate verdicts
        self.write(d)
        self.result.requeue_after = d.requeue_after
        self.result.problem = d.problem
        self.result.phase = d.phase
        self.result.run_seconds = d.run_seconds
        return self.result

    # ---------------------------------------------------------------------------------------------
    # reads

    def current_job(self) -> list[dict[str, Any]]:
        """The current attempt's trainer Job by name (a GET; status.attempts says which). Never reconciled:
        none (no GET): its Job is made in the same pass as its first status, and the apply of a Job made
        by an earlier pass that died before writing the status returns that Job unchanged."""
        if not self.reconciled_before:
            return []
        attempts = int((self.obj.get("status") or {}).get("attempts") or 0)
        job = self.kube.get("Job", self.ns, job_name(self.name, max(attempts, 1)))
        return [job] if job is not None and self.owned(job) else []

    def configmap_run(self) -> str | None:
        key = ("ConfigMap", self.ns, configmap_name(self.name))
        cached = self.r.cache.get(key)
        if cached is not None:
            return cached[1]
        if not self.reconciled_before:
            return None  # never reconciled: no ConfigMap yet
        cm = self.kube.get("ConfigMap", self.ns, key[2])
        if cm is None or not self.owned(cm):
            return None
        self.r.cache.put(key, applied_hash(cm), _labels(cm).get(RUN_ID_LABEL))
        return _labels(cm).get(RUN_ID_LABEL)

    def read_more(self, observed: Observed, need: Need) -> None:
        if need.what == "all_jobs":
            # A LIST (the API server scans the namespace's Jobs): only when the decision needs them all.
            jobs = self.kube.list("Job", self.ns, {FINETUNEJOB_LABEL: label_value(self.name)})
            observed.jobs = [j for j in jobs if self.owned(j)]
            observed.all_jobs = True
        elif need.what == "pods":
            selector = {"batch.kubernetes.io/controller-uid": need.job_uid or ""}
            observed.pods[need.job_uid or ""] = self.kube.list("Pod", self.ns, selector)
        elif need.what == "job_events":
            # Only for a Job without pods (the decision asks once the Job had time to make them).
            fields = {"involvedObject.uid": need.job_uid or "", "reason": "FailedCreate"}
            observed.job_events[need.job_uid or ""] = self.kube.list("Event", self.ns, fields=fields)
        elif need.what == "chain":
            observed.chain_jobs = chains.read_chain(
                lambda n: self.kube.get("FineTuneJob", self.ns, n), self.obj
            )
        elif need.what == "fit":
            observed.fit = self.read_fit()
        elif need.what == "references":
            observed.secrets = {n: self.kube.get("Secret", self.ns, n) for n in need.secrets}
            observed.pvcs = {n: self.kube.get("PersistentVolumeClaim", self.ns, n) for n in need.pvcs}
        else:  # pragma: no cover - a decision asking for something unknown is a bug
            raise ValueError(f"unknown need {need.what!r}")

    def read_fit(self) -> tuple[dict[str, Any] | None, str | None, GpuMemory]:
        """The fit check's inputs: the model's config.json (the root model of a chain) and the GPU nodes."""
        spec = self.obj.get("spec") or {}
        model, why = self.root_model(spec.get("model") or {})
        config = None
        if model is not None:
            secret = model.get("secretRef") or {}
            token = self.secret_value(secret.get("name"), secret.get("key") or "HF_TOKEN") if secret else None
            config, why = self.r.fit_cache.config(str(model["uri"]), model.get("revision"), token)
        resources = spec.get("resources") or {}
        try:
            nodes = self.r.fit_cache.nodes(lambda: self.kube.list("Node", None))
        except ApiException as exc:  # e.g. an operator without the right to list nodes: memory unknown
            log.info("cannot list nodes for the fit check: %s %s", exc.status, exc.reason)
            nodes = []
        gpus = gpu_memory_of_nodes(
            resources.get("nodeSelector") or {}, resources.get("gpuResource") or "nvidia.com/gpu", nodes
        )
        return config, why, gpus

    def root_model(self, model: dict[str, Any], hops: int = 8) -> tuple[dict[str, Any] | None, str | None]:
        """The model spec with a uri at the root of a model.fineTuneJobRef chain (a fine-tune keeps its base's
        architecture), or None and why."""
        seen = [self.name]
        while not model.get("uri"):
            ref = (model.get("fineTuneJobRef") or {}).get("name")
            parent = (
                self.kube.get("FineTuneJob", self.ns, ref) if ref and hops > 0 and ref not in seen else None
            )
            if parent is None or ref is None:
                return None, f"the base model comes from FineTuneJob {ref!r}, whose model cannot be found"
            seen.append(str(ref))
            hops -= 1
            model = (parent.get("spec") or {}).get("model") or {}
        return model, None

    def secret_value(self, name: str | None, key: str) -> str | None:
        secret = self.kube.get("Secret", self.ns, name) if name else None
        raw = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(raw).decode(errors="replace").strip() if raw else None

    # ---------------------------------------------------------------------------------------------
    # writes

    def execute(self, d: Decision) -> Refusal | None:
        """Make D's child writes (skipping those already made in this reconcile); stop at the first the
        API server refuses and return it.

        The static children (RBAC, ConfigMap, Service) are applied in waves (static_waves): the objects of a
        wave at once (a refusal of one does not stop the others), the RoleBinding after its Role; a new
        trainer Job only after all of them, since its pods need the ServiceAccount and the ConfigMap. On a
        first reconcile that takes the Job's creation from five sequential round trips to three."""
        todo = [o for o in d.apply if ("apply", o["kind"], o["metadata"]["name"]) not in self.done]
        for wave in static_waves([o for o in todo if o["kind"] != "Job"]):
            refusals = self.apply_statics(wave)
            for obj, refusal in zip(wave, refusals, strict=True):
                if refusal is None:
                    self.done.add(("apply", obj["kind"], obj["metadata"]["name"]))
            for refusal in refusals:
                if refusal is not None:
                    return refusal
        for obj in todo:
            if obj["kind"] != "Job":
                continue
            refusal = self.apply_job(obj, d)
            if refusal is not None:
                return refusal
            self.done.add(("apply", "Job", obj["metadata"]["name"]))
        for kind, name, patch in d.patch:
            if ("patch", kind, name) in self.done:
                continue
            try:
                patched = self.kube.patch(kind, self.ns, name, patch)
            except ApiException as exc:
                return self.refused(exc, kind, name)
            self.record(patched)
            self.done.add(("patch", kind, name))
        for gone in d.delete:
            if ("delete", gone.kind, gone.name) in self.done:
                continue
            try:
                self.kube.delete(gone.kind, self.ns, gone.name, uid=gone.uid, propagation=gone.propagation)
            except ApiException as exc:
                return self.refused(exc, gone.kind, gone.name)
            self.done.add(("delete", gone.kind, gone.name))
        return None

    def apply_statics(self, objs: list[dict[str, Any]]) -> list[Refusal | None]:
        """apply_static of each of OBJS, at the same time on the reconciler's threads (when it has them);
        the refusal (or None) of each, in order. An error that is not a refusal is raised once all of them
        finished (no write of this reconcile goes on after it failed)."""
        if self.r.writers is None or len(objs) < 2:
            return [self.apply_static(obj) for obj in objs]
        futures = [self.r.writers.submit(self.apply_static, obj) for obj in objs]
        wait(futures)
        return [f.result() for f in futures]

    def apply_static(self, obj: dict[str, Any]) -> Refusal | None:
        """Apply a ConfigMap, Service or RBAC object unless what is live was applied with the same content."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        key = (kind, self.ns, name)
        digest = applied_hash(obj)
        cached = self.r.cache.get(key)
        if cached is not None and cached[0] == digest:
            return None
        # Never reconciled before: its children cannot exist yet, so apply without reading first (a
        # foreign object of that name is refused by the API server: two controller references).
        live = self.kube.get(kind, self.ns, name) if self.reconciled_before else None
        if live is not None and not self.owned(live):
            message = (
                f"{kind} {name!r} already exists and does not belong to this FineTuneJob: "
                "delete it or rename the FineTuneJob"
            )
            return Refusal(kind, name, 409, message, foreign=True)
        if live is None or applied_hash(live) != digest:
            try:
                live = self.kube.apply(obj)
            except ApiException as exc:
                return self.refused(exc, kind, name)
        self.r.cache.put(key, applied_hash(live), _labels(live).get(RUN_ID_LABEL))
        return None

    def apply_job(self, body: dict[str, Any], d: Decision) -> Refusal | None:
        try:
            self.record(self.kube.apply(body))
        except ApiException as exc:
            return self.refused(exc, "Job", body["metadata"]["name"])
        created_at = parse_time(self.obj["metadata"].get("creationTimestamp"))
        if d.first_job and created_at is not None:
            # Wall-clock (not the decision's clock) at sub-second precision (creationTimestamp has 1 s).
            self.result.job_created_after = max(0.0, (dt.datetime.now(dt.UTC) - created_at).total_seconds())
        return None

    def refused(self, exc: ApiException, kind: str, name: str) -> Refusal:
        """EXC as a refusal the decision turns into a condition; other errors go up (the queue retries)."""
        if exc.status not in REFUSAL_CODES:
            raise exc
        if namespace_terminating(exc):
            raise _NamespaceTerminating from exc
        return Refusal(kind, name, exc.status, server_message(exc))

    def write(self, d: Decision) -> None:
        if d.status is not None and write_status(self.kube, self.obj, d.status, STATUS_FIELDS) is not None:
            self.record(self.obj)

    def record(self, written: dict[str, Any] | None) -> None:
        """Remember the version a write made: its watch event then queues no reconcile (own_writes.py)."""
        meta = (written or {}).get("metadata") or {}
        kind = (written or {}).get("kind") or ""
        self.r.own_writes.record(
            kind, meta.get("namespace") or self.ns, meta.get("name", ""), meta.get("resourceVersion")
        )


__all__ = ["CONTROLLER", "AppliedCache", "FineTuneJobReconciler", "Result", "server_message"]
