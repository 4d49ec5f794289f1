"""Two `kubetune operator` processes at once, with leader election on a coordination.k8s.io Lease (the
chart's replicaCount: 2): exactly one Job per FineTuneJob, nobody fighting, and a standby that takes over
when the leader is killed (-9), stopped (SIGTERM) or loses its lease.

The operators watch only this test's namespace (never the session's rel-* operator) and use the default
timings (lease 15 s, renew deadline 10 s, retry 2 s), so the takeover figures are the ones a cluster sees.
"""

from __future__ import annotations

import datetime as dt
import signal
import time

import pytest
from kubernetes import client

from tests.reliability import faults
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok, pytest.mark.timeout(240)]

LEASE = "kubetune-test"
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0
# Room for a loaded 2-core machine: a retry with jitter (1.2 x), the standby's own round trip, kopf's start.
MARGIN = 10.0


@pytest.fixture
def pair(kube, own_ns, tmp_path):
    """Two elected operators (not started), stopped after the test."""
    env = {
        "KUBETUNE_LEADER_ELECT": "true",
        "KUBETUNE_LEADER_ELECTION_ID": LEASE,
        "KUBETUNE_LEADER_ELECTION_NAMESPACE": own_ns,
    }
    ops = [faults.operator(kube, tmp_path / name, own_ns, **env) for name in ("a", "b")]
    yield ops
    for op in ops:
        op.stop()


def leading(op) -> bool:
    return op.metric("leader_election_master_status") == 1


def lease(kube, ns: str) -> client.V1LeaseSpec:
    return client.CoordinationV1Api(kube.api).read_namespaced_lease(LEASE, ns).spec


def log_text(op) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(op.log_dir.glob("operator-*.log")))


def start_leader_and_standby(pair) -> None:
    a, b = pair
    a.start()
    wait_for(lambda: leading(a), 30, 0.2, "the first operator to take the lease")
    b.start()  # healthy (/healthz answers) while it stands by
    assert not leading(b)


def test_two_operators_make_one_job_each_without_fighting_and_the_standby_takes_over_after_kill_9(
    kube, own_ns, pair
):
    a, b = pair
    start_leader_and_standby(pair)
    names = [f"ft-{i}" for i in range(40)]
    faults.create_burst(kube, own_ns, names)
    faults.wait_converged(kube, own_ns, names, 120)

    # No fighting: once converged nothing is written any more (resourceVersions stay), and the standby
    # never started its controllers nor wrote anything.
    before = faults.settled_versions(kube, own_ns)
    # Over two renewals of the lease (the standby looked at it at each retry).
    renewed = lease(kube, own_ns).renew_time
    wait_for(
        lambda: (lease(kube, own_ns).renew_time - renewed).total_seconds() >= 2 * RETRY_PERIOD,
        6 * RETRY_PERIOD, 0.5, "two renewals of the leader's lease",
    )  # fmt: skip
    assert faults.resource_versions(kube, own_ns) == before
    assert b.metric("kubetune_api_writes_total") == 0
    assert "kubetune operator started" not in log_text(b)
    spec = lease(kube, own_ns)
    assert spec.holder_identity and spec.lease_duration_seconds == LEASE_DURATION
    assert f"{spec.holder_identity} became the leader" in log_text(a)

    a.proc.kill()  # SIGKILL: no release, the lease must expire
    killed = time.monotonic()
    faults.create_burst(kube, own_ns, ["after-kill"])
    wait_for(lambda: leading(b), LEASE_DURATION + MARGIN, 0.2, "the standby to take the lease over")
    took_over = time.monotonic() - killed
    faults.wait_converged(kube, own_ns, [*names, "after-kill"], 60)
    reconciled = time.monotonic() - killed
    print(f"\nkill -9 of the leader -> standby leads after {took_over:.1f} s, a new FineTuneJob has its Job "
          f"{reconciled:.1f} s after the kill")  # fmt: skip
    assert took_over <= LEASE_DURATION + MARGIN
    assert reconciled <= LEASE_DURATION + 2 * MARGIN
    new = lease(kube, own_ns)
    assert new.holder_identity != spec.holder_identity
    assert new.lease_transitions == (spec.lease_transitions or 0) + 1


def test_a_leader_stopped_with_sigterm_releases_the_lease_and_the_standby_takes_over_at_once(
    kube, own_ns, pair
):
    a, b = pair
    start_leader_and_standby(pair)
    a.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert a.proc.wait(30) == 0
    exited = time.monotonic() - stopped
    assert "released lease" in log_text(a)
    wait_for(lambda: leading(b), RETRY_PERIOD * 1.2 + MARGIN, 0.1, "the standby to take the released lease")
    took_over = time.monotonic() - stopped
    print(
        f"\nSIGTERM to the leader: it exited (0) after {exited:.1f} s, the standby leads after {took_over:.1f} s"
    )
    assert took_over < LEASE_DURATION  # the release, not the expiry
    faults.create_burst(kube, own_ns, ["after-sigterm"])
    faults.wait_converged(kube, own_ns, ["after-sigterm"], 60)


def test_a_leader_that_loses_its_lease_steps_down(kube, own_ns, pair):
    """Someone else holds the lease (here: written by hand, as after a long network partition): the old
    leader exits (1) at its next renewal instead of reconciling next to the new one."""
    a, b = pair
    start_leader_and_standby(pair)
    now = dt.datetime.now(dt.UTC)
    leases = client.CoordinationV1Api(kube.api)
    current = leases.read_namespaced_lease(LEASE, own_ns)
    current.spec.holder_identity = "somebody-else"
    current.spec.acquire_time = current.spec.renew_time = now
    leases.replace_namespaced_lease(LEASE, own_ns, current)
    stolen = time.monotonic()
    assert a.proc.wait(RETRY_PERIOD * 1.2 + MARGIN) == 1
    print(f"\nlease taken by another holder: the leader exited (1) after {time.monotonic() - stolen:.1f} s")
    assert "lost lease" in log_text(a) and "the lease is held by somebody-else" in log_text(a)
    assert lease(kube, own_ns).holder_identity == "somebody-else"  # it did not write after losing it
    # A standby stops at once on SIGTERM (it holds nothing to release).
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(10) == 0
    assert "stopped while standing by" in log_text(b)
    assert lease(kube, own_ns).holder_identity == "somebody-else"
