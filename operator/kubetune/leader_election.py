"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go (and so controller-runtime) does it:
of several ``kubetune operator`` processes (the chart's ``replicaCount: 2``, the old and new pod of a rolling
update, a pod on a partitioned node and its replacement) only the one holding the Lease runs the controllers.

The protocol (client-go's ``leaderelection``):

- A candidate reads the Lease every retry period. It notes, on its own monotonic clock, when it last saw
  the record change; a lease whose record has not changed for ``leaseDurationSeconds`` of *this* clock has
  expired. No two machines' clocks are ever compared.
- It takes a free (no holder), released or expired lease with an update that carries the
  ``resourceVersion`` it read, so of two candidates racing for it one gets 200 and the other 409 Conflict.
- The leader renews every retry period. When it could not renew for the renew deadline (shorter than the
  lease duration) it steps down: it gives up before anyone else may take over.
- On a clean shutdown the leader releases the lease (empty holder), so a standby takes over at its next
  retry instead of after a lease duration.

Why not ``kubernetes.leaderelection`` (the official client's package): it has only a ConfigMap lock (no
Lease), uses the package-global default configuration (not the operator's credentials), can wait in
``acquire()`` forever with no way to stop a standby on SIGTERM, never releases the lease, and writes
``datetime``'s ``str()`` where a Lease needs RFC 3339 MicroTime. The requests here go through the official
client's ``CoordinationV1Api``. Why not kopf's peering: see docs/operations.md ("Two operators").

The decisions (``observe``, ``held_by_another``, ``claim``, ``released``) are pure; ``LeaseLock`` is the I/O
and ``LeaderElector`` the loop. kubetune.manager runs the loop around kopf.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from prometheus_client import Gauge

log = logging.getLogger("kubetune.leader")

# controller-runtime's name for it, so dashboards made for Go operators work.
LEADER = Gauge(
    "leader_election_master_status", "1 while this process holds the leader Lease, else 0.", ["name"]
)

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ElectionError(ValueError):
    """The leader election settings cannot work (a message naming the setting)."""


@dataclass(frozen=True)
class ElectionConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's own checks: a leader must give up (renew deadline) before its lease can expire for the
        # others, and must get a few tries at renewing before that.
        if not self.name or not self.namespace:
            raise ElectionError("leader election needs a lease name and namespace (--leader-election-id, "
                                "--leader-election-namespace)")  # fmt: skip
        if self.retry_period <= 0:
            raise ElectionError(f"KUBETUNE_RETRY_PERIOD_SECONDS={self.retry_period}: must be positive")
        if not self.lease_duration > self.renew_deadline:
            raise ElectionError(
                f"KUBETUNE_LEASE_DURATION_SECONDS={self.lease_duration} must be greater than "
                f"KUBETUNE_RENEW_DEADLINE_SECONDS={self.renew_deadline}"
            )
        if not self.renew_deadline > 1.2 * self.retry_period:
            raise ElectionError(
                f"KUBETUNE_RENEW_DEADLINE_SECONDS={self.renew_deadline} must be greater than 1.2 x "
                f"KUBETUNE_RETRY_PERIOD_SECONDS={self.retry_period}"
            )


def new_identity() -> str:
    """Unique per process, readable in `kubectl get lease -o yaml`: the pod name (hostname) and a uuid."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def default_namespace(explicit: str | None) -> str:
    """The Lease's namespace: the setting, else the pod's own namespace in a cluster."""
    if explicit:
        return explicit
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    except OSError:
        raise ElectionError(
            "leader election outside a cluster needs the Lease's namespace: --leader-election-namespace NS "
            "(or KUBETUNE_LEADER_ELECTION_NAMESPACE)"
        ) from None


def micro_time(t: dt.datetime) -> str:
    """RFC 3339 with microseconds, as the API server's MicroTime wants it (always with the fraction)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------------
# Pure decisions


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as the election reads and writes it."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> LeaseRecord:
        spec = spec or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observation:
    """The record a candidate last saw change, and when (its own monotonic clock)."""

    record: LeaseRecord
    seen_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """A changed record restarts the expiry clock; an unchanged one keeps it running."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def held_by_another(seen: Observation, me: str, now: float, default_duration: int) -> bool:
    """Someone else holds the lease and it has not expired (by this candidate's clock)."""
    record = seen.record
    if not record.holder or record.holder == me:
        return False
    return seen.seen_at + (record.duration_seconds or default_duration) > now


def claim(current: LeaseRecord | None, me: str, wall_now: str, duration: int) -> LeaseRecord:
    """The record that makes (or keeps) ME the holder: a renewal keeps the acquire time; a takeover counts
    a transition."""
    if current is not None and current.holder == me:
        return replace(current, renew_time=wall_now, duration_seconds=duration)
    return LeaseRecord(
        holder=me,
        duration_seconds=duration,
        acquire_time=wall_now,
        renew_time=wall_now,
        transitions=current.transitions + 1 if current is not None else 0,
    )


def released(current: LeaseRecord, wall_now: str) -> LeaseRecord:
    """What a leader writes on a clean shutdown (client-go's ReleaseOnCancel): no holder, so the next
    candidate to look takes over at once."""
    return LeaseRecord(
        holder="",
        duration_seconds=1,
        acquire_time=wall_now,
        renew_time=wall_now,
        transitions=current.transitions,
    )


# ---------------------------------------------------------------------------------------------------
# I/O


class LeaseLock:
    """Read, create and update one Lease with the official client (optimistic concurrency: an update
    carries the resourceVersion it read)."""

    def __init__(self, api: k8s.ApiClient, name: str, namespace: str) -> None:
        self.leases = k8s.CoordinationV1Api(api)
        self.name = name
        self.namespace = namespace

    def get(self, timeout: float) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion; None when the Lease does not exist."""
        try:
            resp = self.leases.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        lease = json.loads(resp.data)
        return LeaseRecord.from_spec(lease.get("spec")), lease["metadata"]["resourceVersion"]

    def _body(self, record: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        spec = {k: v for k, v in record.spec().items() if v is not None}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def create(self, record: LeaseRecord, timeout: float) -> bool:
        """False when another candidate created it first."""
        try:
            self.leases.create_namespaced_lease(
                self.namespace, self._body(record, None), _preload_content=False, _request_timeout=timeout
            )
            return True
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def update(self, record: LeaseRecord, resource_version: str, timeout: float) -> bool:
        """False when the Lease changed since it was read (another candidate wrote first)."""
        try:
            self.leases.replace_namespaced_lease(
                self.name,
                self.namespace,
                self._body(record, resource_version),
                _preload_content=False,
                _request_timeout=timeout,
            )
            return True
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise


class LeaderElector:
    """One candidate: ``acquire`` waits to lead, ``keep_leading`` renews until stopped or lost,
    ``release`` hands the lease over. Blocking (run it in a thread of its own, not on an event loop that
    a burst of watch events may keep busy)."""

    def __init__(
        self, lock: LeaseLock, cfg: ElectionConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lock = lock
        self.cfg = cfg
        self.clock = clock
        self.seen: Observation | None = None
        self.renewed_at: float | None = None  # clock() of the last successful acquire or renewal
        self.errors = 0  # failed API requests (logged at most once per state change)
        LEADER.labels(cfg.name).set(0)

    @property
    def holder(self) -> str:
        return self.seen.record.holder if self.seen else ""

    def _wall(self) -> str:
        return micro_time(dt.datetime.now(dt.UTC))

    def try_acquire_or_renew(self, timeout: float) -> bool:
        """One round: read the Lease and, when it is free, expired or ours, write ourselves as holder."""
        me, now = self.cfg.identity, self.clock()
        got = self.lock.get(timeout)
        if got is None:
            record = claim(None, me, self._wall(), self.cfg.lease_duration)
            if not self.lock.create(record, timeout):
                return False
            self.seen, self.renewed_at = Observation(record, now), now
            return True
        current, resource_version = got
        before = self.holder
        self.seen = observe(self.seen, current, now)
        if current.holder != before and current.holder and current.holder != me:
            log.info(
                "leader election: lease %s/%s is held by %s",
                self.cfg.namespace,
                self.cfg.name,
                current.holder,
            )
        if held_by_another(self.seen, me, now, self.cfg.lease_duration):
            return False
        record = claim(current, me, self._wall(), self.cfg.lease_duration)
        if not self.lock.update(record, resource_version, timeout):
            return False
        self.seen, self.renewed_at = Observation(record, now), now
        return True

    def _round(self, timeout: float) -> bool:
        try:
            ok = self.try_acquire_or_renew(timeout)
        except Exception as exc:  # noqa: BLE001 - the API server may be away; the next round tries again
            self.errors += 1
            if self.errors == 1 or self.errors % 30 == 0:
                log.warning("leader election: lease %s/%s: %s (%d failed requests so far)",
                            self.cfg.namespace, self.cfg.name, exc, self.errors)  # fmt: skip
            return False
        return ok

    def _pause(self) -> float:
        return self.cfg.retry_period * random.uniform(1.0, 1.2)  # jitter: candidates do not poll in step

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this candidate leads (True) or STOP is set (False)."""
        log.info("leader election: %s is a candidate for lease %s/%s",
                 self.cfg.identity, self.cfg.namespace, self.cfg.name)  # fmt: skip
        request_timeout = max(1.0, self.cfg.renew_deadline / 2)
        while not stop.is_set():
            if self._round(request_timeout):
                LEADER.labels(self.cfg.name).set(1)
                log.info("leader election: %s became the leader (lease %s/%s)",
                         self.cfg.identity, self.cfg.namespace, self.cfg.name)  # fmt: skip
                return True
            stop.wait(self._pause())
        return False

    def keep_leading(self, stop: threading.Event) -> bool:
        """Renew every retry period until STOP is set (True) or the lease is lost (False): someone else
        holds it, or no renewal succeeded for the renew deadline. Each request is cut off at the deadline,
        so a hung API server cannot keep a deposed leader running past it."""
        while not stop.wait(self._pause()):
            assert self.renewed_at is not None
            left = self.renewed_at + self.cfg.renew_deadline - self.clock()
            if left > 0 and self._round(max(0.2, min(left, self.cfg.renew_deadline / 2))):
                continue
            if self.holder and self.holder != self.cfg.identity:
                reason = f"the lease is held by {self.holder}"
            elif self.clock() - self.renewed_at >= self.cfg.renew_deadline:
                reason = f"no renewal for {self.cfg.renew_deadline:g} s"
            else:
                continue
            LEADER.labels(self.cfg.name).set(0)
            log.error("leader election: %s lost lease %s/%s: %s", self.cfg.identity, self.cfg.namespace,
                      self.cfg.name, reason)  # fmt: skip
            return False
        return True

    def release(self, timeout: float = 5.0) -> bool:
        """Give the lease up (only when we still hold it), so a standby takes over at its next retry."""
        LEADER.labels(self.cfg.name).set(0)
        try:
            got = self.lock.get(timeout)
            if got is None or got[0].holder != self.cfg.identity:
                return False
            done = self.lock.update(released(got[0], self._wall()), got[1], timeout)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            log.warning(
                "leader election: could not release lease %s/%s: %s", self.cfg.namespace, self.cfg.name, exc
            )
            return False
        if done:
            log.info(
                "leader election: %s released lease %s/%s",
                self.cfg.identity,
                self.cfg.namespace,
                self.cfg.name,
            )
        return done
