"""The FineTuneJob reconcile's I/O shell: observe once, decide once (``finetunejob_decision.decide``), act
once through the one write path (writes.py).

1. Observe: the FineTuneJob, its trainer Jobs and their pods, and the FineTuneJobs of its chain come from
   the watch index (no request); the live ConfigMap's run id from what this process last applied (a GET
   only when it does not know); the Secrets, PVCs and FailedCreate Events only when the decision may need
   them (finetunejob_observe.py declares when).
2. Decide, pure.
3. Act: the static children, then a new trainer Job, Job patches and deletions; Events; the status (as of
   the resourceVersion decided from). A write the API server refuses is an observation too: the decision
   is made once more with it, and says it in a condition (at most once per refused write).

Level-based: it never asks why it runs (create, update, a child's event, a timer, a restart); it only
looks at the world. Everything that must survive an operator restart lives in the cluster: the run id and
attempt are labels of the trainer Jobs (and the ConfigMap's run id), deadlines are computed from status
timestamps and the Jobs' creationTimestamps, conditions keep their lastTransitionTime.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import Executor, wait
from dataclasses import dataclass, replace
from typing import Any

from kubetune import metrics_judge
from kubetune.api.fit import GpuMemory, gpu_memory_of_nodes
from kubetune.modelconfig import ConfigCache
from kubetune.render.common import RUN_ID_LABEL
from kubetune.render.finetunejob import RenderOptions, configmap_name

from . import chains
from .client import ApiException, Kube
from .clock import now, parse_time
from .finetunejob_decision import STATUS_FIELDS, Decision, Observed, decide
from .finetunejob_observe import finished_with_this_spec, reads
from .index import WatchIndex
from .refusals import Refusal
from .writes import Conflict, Expiring, NamespaceTerminating, Writer

log = logging.getLogger("kubetune.finetunejob")

CONTROLLER = "finetunejob"
STATIC_KINDS_RECHECK_SECONDS = 600.0


@dataclass
class Result:
    """What the caller (the work queue) does next."""

    requeue_after: float | None = None
    """Reconcile again after this many seconds (timers: deadlines, TTL, waiting for deletions)."""
    problem: bool = False
    """Something the user must fix: retry with exponential backoff until it is fixed."""
    gone: bool = False
    """The object no longer exists: forget its key."""
    phase: str | None = None
    job_created_after: float | None = None
    """Seconds from the FineTuneJob's creation to its first trainer Job (measured once)."""
    run_seconds: float | None = None
    """Duration of a run that finished in this reconcile."""


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


class FineTuneJobReconciler:
    """One reconcile of one FineTuneJob; ``reconcile`` is safe to call from several threads for different
    objects (the work queue never runs the same object twice at once)."""

    def __init__(
        self,
        kube: Kube,
        opts: RenderOptions,
        *,
        writer: Writer | None = None,
        signatures: Expiring | None = None,
        clock: Callable[[], dt.datetime] = now,
        writers: Executor | None = None,
        fit_cache: ConfigCache | None = None,
    ):
        self.kube = kube
        self.fit_cache = fit_cache or ConfigCache()
        """config.json and GPU nodes read for the fit check (kept a while: kubetune.modelconfig)."""
        self.opts = opts
        self.writer = writer or Writer(kube)
        self.index: WatchIndex = self.writer.index
        self.signatures = Expiring(STATIC_KINDS_RECHECK_SECONDS) if signatures is None else signatures
        """What the static children were last rendered and applied from, per FineTuneJob."""
        self.clock = clock
        self.writers = writers
        """Threads for a reconcile's independent child applies (None: one after the other)."""

    def reconcile(self, namespace: str, name: str) -> Result:
        result = self._reconcile(namespace, name)
        if result.gone:  # what was remembered of it is of no use any more
            self.signatures.forget((namespace, name))
            self.writer.children.forget_owned("FineTuneJob", namespace, name)
        return result

    def _reconcile(self, namespace: str, name: str) -> Result:
        obj = self.index.get("FineTuneJob", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Result(gone=True)  # gone: garbage collection removes the children
        try:
            return _Shell(self, obj).run()
        except NamespaceTerminating:
            log.debug("%s/%s: the namespace is being deleted", namespace, name)
            return Result(gone=True)
        except Conflict as conflict:
            # Decided from a version that is not the latest: read it again and reconcile once more.
            log.debug("%s/%s: %s; reconciling the latest version", namespace, name, conflict)
            gone = self.writer.refresh("FineTuneJob", namespace, name) is None
            return Result(requeue_after=None if gone else 0.0, gone=gone)


class _Shell:
    """Reads and writes of one reconcile."""

    def __init__(self, r: FineTuneJobReconciler, obj: dict[str, Any]):
        self.r = r
        self.writer = r.writer
        self.obj = obj
        meta = obj["metadata"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        # Never reconciled: its unwatched children cannot exist yet (no GET before applying them).
        self.reconciled_before = bool((obj.get("status") or {}).get("observedGeneration"))
        # Finished with this spec: what the operator remembers of its unwatched children stands however old
        # (drift repair, a GET of each child every resync, is for work in progress: at 10,000 FineTuneJobs,
        # most of them finished, it was a burst of thousands of GETs every ten minutes).
        self.settled = finished_with_this_spec(obj)
        self.done: set[tuple[str, str, str]] = set()  # writes made in this reconcile: (verb, kind, name)
        self.result = Result()

    def run(self) -> Result:
        at = self.r.clock()
        observed = self.observe(at)
        refusals: tuple[Refusal, ...] = ()
        while True:
            d = decide(replace(observed, refusals=refusals), self.r.opts, at)
            if d.delete_self:
                self.writer.emit(self.obj, d.events)
                self.writer.delete("FineTuneJob", self.ns, self.name, uid=self.uid)
                return Result(gone=True)
            if d.status_first:
                self.write_status(d)
            refusal = self.act(d)
            if refusal is None or refusal in refusals:
                break
            log.info(
                "%s/%s: %s %s refused: %s", self.ns, self.name, refusal.kind, refusal.name, refusal.message
            )
            refusals += (refusal,)  # the next decision never asks for this write again
        if d.static_signature is not None:
            self.r.signatures.put((self.ns, self.name), d.static_signature)
        # Events before the status: whoever sees the new status finds its Events (a failed status write
        # retries the reconcile, and the recorder drops the repeated Events).
        self.writer.emit(self.obj, d.events)
        metrics_judge.count([e.reason for e in d.events])  # fit refusals, gate verdicts
        self.write_status(d)
        self.result.requeue_after = d.requeue_after
        self.result.problem = d.problem
        self.result.phase = d.phase
        self.result.run_seconds = d.run_seconds
        return self.result

    # ---------------------------------------------------------------------------------------------
    # observe

    def observe(self, at: dt.datetime) -> Observed:
        index = self.r.index
        jobs = index.owned("Job", self.ns, self.uid)
        pods = {uid: index.pods_of_job(self.ns, uid) for j in jobs if (uid := j["metadata"].get("uid"))}
        chain_jobs = chains.read_chain(lambda n: index.get("FineTuneJob", self.ns, n), self.obj)
        wanted = reads(self.obj, jobs, pods, chain_jobs, at)
        kube = self.r.kube
        secrets = pvcs = None
        if wanted.secrets is not None and wanted.pvcs is not None:
            secrets = {n: s for n in wanted.secrets if (s := kube.get("Secret", self.ns, n)) is not None}
            pvcs = {
                n: p for n in wanted.pvcs if (p := kube.get("PersistentVolumeClaim", self.ns, n)) is not None
            }
        job_events = {
            uid: kube.list("Event", self.ns, fields={"involvedObject.uid": uid, "reason": "FailedCreate"})
            for uid in wanted.job_events
        }
        return Observed(
            obj=self.obj,
            jobs=tuple(jobs),
            pods=pods,
            configmap_run=self.configmap_run(),
            secrets=secrets,
            pvcs=pvcs,
            static_signature=self.r.signatures.get((self.ns, self.name), any_age=self.settled),
            job_events=job_events,
            chain_jobs=chain_jobs,
            fit=self.read_fit() if wanted.fit else None,
        )

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
            nodes = self.r.fit_cache.nodes(lambda: self.r.kube.list("Node", None))
        except ApiException as exc:  # e.g. an operator without the right to list nodes: memory unknown
            log.info("cannot list nodes for the fit check: %s %s", exc.status, exc.reason)
            nodes = []
        gpus = gpu_memory_of_nodes(
            resources.get("nodeSelector") or {}, resources.get("gpuResource") or "nvidia.com/gpu", nodes
        )
        return config, why, gpus

    def root_model(self, model: dict[str, Any], hops: int = 8) -> tuple[dict[str, Any] | None, str | None]:
        """The model spec with a uri at the root of a model.fineTuneJobRef chain (a fine-tune keeps its base's
        architecture), or None and why. The FineTuneJobs of the chain come from the watch index."""
        seen = [self.name]
        while not model.get("uri"):
            ref = (model.get("fineTuneJobRef") or {}).get("name")
            parent = (
                self.r.index.get("FineTuneJob", self.ns, ref)
                if ref and hops > 0 and ref not in seen
                else None
            )
            if parent is None or ref is None:
                return None, f"the base model comes from FineTuneJob {ref!r}, whose model cannot be found"
            seen.append(str(ref))
            hops -= 1
            model = (parent.get("spec") or {}).get("model") or {}
        return model, None

    def secret_value(self, name: str | None, key: str) -> str | None:
        secret = self.r.kube.get("Secret", self.ns, name) if name else None
        raw = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(raw).decode(errors="replace").strip() if raw else None

    def configmap_run(self) -> str | None:
        cm = self.writer.live(
            "ConfigMap",
            self.ns,
            configmap_name(self.name),
            may_exist=self.reconciled_before,
            any_age=self.settled,
        )
        if cm is None or not any(
            ref.get("uid") == self.uid for ref in cm["metadata"].get("ownerReferences") or []
        ):
            return None
        return ((cm["metadata"].get("labels") or {}).get(RUN_ID_LABEL)) or None

    # ---------------------------------------------------------------------------------------------
    # act

    def act(self, d: Decision) -> Refusal | None:
        """Make D's child writes (skipping those already made in this reconcile); stop at the first the
        API server refuses and return it.

        The static children (RBAC, ConfigMap, Service) are applied in waves (static_waves): the objects of a
        wave at once (a refusal of one does not stop the others), the RoleBinding after its Role; a new
        trainer Job only after all of them, since its pods need the ServiceAccount and the ConfigMap. On a
        first reconcile that takes the Job's creation from five sequential round trips to three."""
        todo = [o for o in d.apply if ("apply", o["kind"], o["metadata"]["name"]) not in self.done]
        for wave in static_waves([o for o in todo if o["kind"] != "Job"]):
            refusals = self.apply_all(wave)
            for obj, refusal in zip(wave, refusals, strict=True):
                if refusal is None:
                    self.done.add(("apply", obj["kind"], obj["metadata"]["name"]))
            for refusal in refusals:
                if refusal is not None:
                    return refusal
        for obj in todo:
            if obj["kind"] != "Job":
                continue
            refusal = self.apply(obj)
            if refusal is not None:
                return refusal
            self.done.add(("apply", "Job", obj["metadata"]["name"]))
            self.measure(d)
        for kind, name, patch in d.patch:
            if ("patch", kind, name) not in self.done:
                refusal = self.writer.patch(kind, self.ns, name, patch)
                if refusal is not None:
                    return refusal
                self.done.add(("patch", kind, name))
        for gone in d.delete:
            if ("delete", gone.kind, gone.name) not in self.done:
                refusal = self.writer.delete(
                    gone.kind, self.ns, gone.name, uid=gone.uid, propagation=gone.propagation
                )
                if refusal is not None:
                    return refusal
                self.done.add(("delete", gone.kind, gone.name))
        return None

    def apply(self, obj: dict[str, Any]) -> Refusal | None:
        return self.writer.apply(obj, owner_uid=self.uid, may_exist=self.reconciled_before)

    def apply_all(self, objs: list[dict[str, Any]]) -> list[Refusal | None]:
        """apply of each of OBJS, at the same time on the reconciler's threads (when it has them); the
        refusal (or None) of each, in order. An error that is not a refusal is raised once all of them
        finished (no write of this reconcile goes on after it failed)."""
        if self.r.writers is None or len(objs) < 2:
            return [self.apply(obj) for obj in objs]
        futures = [self.r.writers.submit(self.apply, obj) for obj in objs]
        wait(futures)
        return [f.result() for f in futures]

    def measure(self, d: Decision) -> None:
        created_at = parse_time(self.obj["metadata"].get("creationTimestamp"))
        if d.first_job and created_at is not None:
            # Wall-clock (not the decision's clock) at sub-second precision (creationTimestamp has 1 s).
            self.result.job_created_after = max(0.0, (dt.datetime.now(dt.UTC) - created_at).total_seconds())

    def write_status(self, d: Decision) -> None:
        if d.status is not None:
            self.writer.status(self.obj, d.status, STATUS_FIELDS)


__all__ = ["CONTROLLER", "FineTuneJobReconciler", "Result", "static_waves"]
