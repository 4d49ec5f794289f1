"""The operator killed (-9) or stopped (SIGTERM) in the middle of a burst of FineTuneJobs, and the API
server or etcd restarted under it: every FineTuneJob ends with exactly one Job (attempt 1, no extra
attempt), one of each child and a complete status; nothing is half-written; the operator never crashes.

Each test runs its own `kubetune operator` on its own namespace (never the session's rel-* operator).
The burst is KUBETUNE_FAULT_BURST FineTuneJobs (default 100 here; docs/reliability.md has the 500 run),
suspended, so the operator does all its work (children, status, events) and no pod starts.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from kubernetes import client

from tests.reliability import faults
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok, pytest.mark.timeout(600)]

BURST = int(os.environ.get("KUBETUNE_FAULT_BURST", "100"))
CONVERGE_TIMEOUT = 120 + BURST  # seconds: a loaded 2-core machine makes ~3-6 Jobs a second
GRACE_SECONDS = 30  # a pod's default terminationGracePeriodSeconds


def burst_names(prefix: str, n: int = BURST) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def job_count(kube, ns: str) -> int:
    return len(client.BatchV1Api(kube.api).list_namespaced_job(ns, label_selector=faults.OWNER_LABEL).items)


class Burst:
    """Create NAMES from a background thread (the fault strikes while objects are still being created);
    creations that fail while the API server is away are retried."""

    def __init__(self, kube, ns: str, names: list[str]):
        self.kube, self.ns, self.names = kube, ns, names
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.failed_calls = 0

    def _run(self) -> None:
        pending = list(self.names)
        while pending:
            try:
                faults.create_burst(self.kube, self.ns, pending[:25])
                pending = pending[25:]
            except client.ApiException as exc:
                if exc.status == 409:  # created before the error: drop what exists
                    existing = set(faults.finetunejobs(self.kube, self.ns))
                    pending = [n for n in pending if n not in existing]
                    continue
                self.failed_calls += 1
                time.sleep(0.5)
            except Exception:  # noqa: BLE001 - connection refused while the API server restarts
                self.failed_calls += 1
                time.sleep(0.5)

    def __enter__(self) -> Burst:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(CONVERGE_TIMEOUT)
        assert not self.thread.is_alive(), "the burst did not finish creating"


def test_kill_9_during_a_burst_leaves_one_job_per_finetunejob_and_every_status_complete(
    kube, own_ns, tmp_path
):
    op = faults.operator(kube, tmp_path, own_ns)
    op.start()
    names = burst_names("k9")
    started = time.monotonic()
    try:
        with Burst(kube, own_ns, names):
            wait_for(
                lambda: job_count(kube, own_ns) >= BURST // 3, CONVERGE_TIMEOUT, 0.2, "a third of the Jobs"
            )
            op.proc.kill()
            op.proc.wait(10)
            made_before = job_count(kube, own_ns)
            op.start()
        took = faults.wait_converged(kube, own_ns, names, CONVERGE_TIMEOUT)
        print(f"\nkill -9 after {made_before}/{BURST} Jobs: all {BURST} converged {took:.1f} s after the restart "
              f"({time.monotonic() - started:.1f} s in all)")  # fmt: skip
        assert faults.problems(kube, own_ns, names) == []
        assert faults.error_lines(op) == []
    finally:
        op.stop()


def test_sigterm_during_reconciles_writes_nothing_by_halves_and_exits_within_the_grace_period(
    kube, own_ns, tmp_path
):
    op = faults.operator(kube, tmp_path, own_ns)
    op.start()
    names = burst_names("st")
    try:
        faults.create_burst(kube, own_ns, names)
        wait_for(
            lambda: job_count(kube, own_ns) >= BURST // 4, CONVERGE_TIMEOUT, 0.1, "a quarter of the Jobs"
        )
        op.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = op.proc.wait(GRACE_SECONDS)
        exited = time.monotonic() - stopped
        assert code == 0, op.log_tail()
        # The operator is gone: what it left is final until the next start. Every FineTuneJob has all of
        # its children and its status, or nothing at all.
        objs, kids = faults.finetunejobs(kube, own_ns), faults.children(kube, own_ns)
        done, untouched, halves = [], [], []
        for name in names:
            counts = {kind: kids[kind][name] for kind in faults.CHILD_KINDS}
            complete = all(c == 1 for c in counts.values()) and faults.status_complete(objs[name])
            if complete:
                done.append(name)
            elif not any(counts.values()) and not objs[name].get("status"):
                untouched.append(name)
            else:
                halves.append((name, counts, objs[name].get("status")))
        print(f"\nSIGTERM after {len(done)}/{BURST} FineTuneJobs: exited (0) in {exited:.1f} s; "
              f"{len(untouched)} untouched, {len(halves)} half-written")  # fmt: skip
        assert halves == []
        assert done and untouched, "the signal came in the middle of the burst"
        op.start()
        faults.wait_converged(kube, own_ns, names, CONVERGE_TIMEOUT)
        assert faults.error_lines(op) == []
    finally:
        op.stop()


def test_an_api_server_restart_during_a_burst(kube, own_ns, tmp_path):
    """The operator talks to a second kube-apiserver on the same etcd (as in an HA control plane; the
    session's own API server is left alone), which is restarted in the middle of the burst."""
    if kube.control_plane is None:
        pytest.skip("restarts an API server of the local control plane")
    with kube.control_plane.extra_apiserver() as extra:
        op = faults.operator(kube, tmp_path, own_ns)
        op.kubeconfig = kube.kubeconfig_for(extra.server, tmp_path / "extra.kubeconfig")
        op.start()
        names = burst_names("as")
        try:
            with Burst(kube, own_ns, names):
                wait_for(
                    lambda: job_count(kube, own_ns) >= BURST // 3,
                    CONVERGE_TIMEOUT,
                    0.2,
                    "a third of the Jobs",
                )
                restarted = time.monotonic()
                extra.restart()
                down = time.monotonic() - restarted
            faults.check_recovered(
                kube,
                op,
                own_ns,
                names,
                down,
                f"API server restart ({down:.1f} s until ready again)",
                CONVERGE_TIMEOUT,
            )
        finally:
            op.stop()


def test_an_etcd_restart_during_a_burst(kube, own_ns, tmp_path):
    """etcd restarted under the (only) API server: requests fail for a few seconds, watches end. The
    operator goes on; every FineTuneJob created before, during and after gets exactly one Job."""
    if kube.control_plane is None:
        pytest.skip("restarts etcd of the local control plane")
    op = faults.operator(kube, tmp_path, own_ns)
    op.start()
    names = burst_names("etcd")
    half = len(names) // 2
    try:
        faults.create_burst(kube, own_ns, names[:half])
        wait_for(lambda: job_count(kube, own_ns) >= half // 2, CONVERGE_TIMEOUT, 0.2, "a quarter of the Jobs")
        # etcd goes away while the operator reconciles the first half and the second half is being created.
        restarted = time.monotonic()
        restart = threading.Thread(target=kube.control_plane.restart, args=("etcd",))
        restart.start()
        with Burst(kube, own_ns, names[half:]) as burst:
            restart.join(60)
            wait_for(
                kube.control_plane.apiserver_ready, 60, 0.2, "the API server ready after the etcd restart"
            )
            down = time.monotonic() - restarted
        what = f"etcd restart ({down:.1f} s until the API server was ready; {burst.failed_calls} failed create calls)"
        faults.check_recovered(kube, op, own_ns, names, down, what, CONVERGE_TIMEOUT)
    finally:
        op.stop()
