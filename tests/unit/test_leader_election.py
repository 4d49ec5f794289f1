"""The leader election's pure decisions (client-go's protocol) and its settings checks. The real thing
(two operators on a real API server, kill -9, SIGTERM, a stolen lease) is tests/reliability/test_leader_election.py."""

from __future__ import annotations

import pytest

from kubetune.leader_election import (
    ElectionConfig,
    ElectionError,
    LeaseRecord,
    Observation,
    claim,
    default_namespace,
    held_by_another,
    micro_time,
    observe,
    released,
)

A, B = "pod-a_1", "pod-b_2"


def test_an_unchanged_record_keeps_its_expiry_clock_and_a_changed_one_restarts_it():
    first = observe(None, LeaseRecord(holder=A, duration_seconds=15, renew_time="t1"), now=100.0)
    assert first.seen_at == 100.0
    assert observe(first, LeaseRecord(holder=A, duration_seconds=15, renew_time="t1"), now=110.0) is first
    renewed = observe(first, LeaseRecord(holder=A, duration_seconds=15, renew_time="t2"), now=110.0)
    assert renewed.seen_at == 110.0


def test_a_lease_expires_by_the_candidates_own_clock_after_its_duration():
    seen = Observation(LeaseRecord(holder=A, duration_seconds=15, renew_time="t1"), seen_at=100.0)
    assert held_by_another(seen, B, now=114.9, default_duration=15)
    assert not held_by_another(seen, B, now=115.0, default_duration=15)
    # The holder itself and a free (released) lease are never "held by another".
    assert not held_by_another(seen, A, now=101.0, default_duration=15)
    free = Observation(LeaseRecord(holder="", duration_seconds=1), seen_at=100.0)
    assert not held_by_another(free, B, now=100.0, default_duration=15)
    # A record without a duration falls back to the candidate's own.
    bare = Observation(LeaseRecord(holder=A), seen_at=100.0)
    assert held_by_another(bare, B, now=109.0, default_duration=10)
    assert not held_by_another(bare, B, now=110.0, default_duration=10)


def test_a_renewal_keeps_the_acquire_time_and_a_takeover_counts_a_transition():
    mine = LeaseRecord(holder=A, duration_seconds=15, acquire_time="t0", renew_time="t1", transitions=3)
    renewed = claim(mine, A, "t2", 15)
    assert (renewed.holder, renewed.acquire_time, renewed.renew_time, renewed.transitions) == (
        A,
        "t0",
        "t2",
        3,
    )
    taken = claim(mine, B, "t9", 15)
    assert (taken.holder, taken.acquire_time, taken.renew_time, taken.transitions) == (B, "t9", "t9", 4)
    created = claim(None, A, "t0", 15)
    assert (created.holder, created.transitions, created.duration_seconds) == (A, 0, 15)


def test_a_released_lease_has_no_holder_and_keeps_the_transitions():
    record = released(LeaseRecord(holder=A, duration_seconds=15, transitions=2), "t5")
    assert record.holder == "" and record.transitions == 2 and record.duration_seconds == 1
    assert "holderIdentity" in record.spec() and record.spec()["holderIdentity"] is None


def test_lease_spec_round_trip():
    spec = {"holderIdentity": A, "leaseDurationSeconds": 15, "acquireTime": "x", "renewTime": "y",
            "leaseTransitions": 4}  # fmt: skip
    assert LeaseRecord.from_spec(spec).spec() == spec
    assert LeaseRecord.from_spec(None) == LeaseRecord()


def test_micro_time_always_has_the_fraction_the_api_server_needs():
    import datetime as dt

    assert micro_time(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T03:04:05.000000Z"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"lease_duration": 10, "renew_deadline": 10}, "KUBETUNE_LEASE_DURATION_SECONDS"),
        ({"renew_deadline": 2, "retry_period": 2}, "KUBETUNE_RENEW_DEADLINE_SECONDS"),
        ({"retry_period": 0}, "KUBETUNE_RETRY_PERIOD_SECONDS"),
        ({"name": ""}, "--leader-election-id"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_setting(kwargs, named):
    base = {"name": "kubetune", "namespace": "ns", "identity": A}
    with pytest.raises(ElectionError, match=named):
        ElectionConfig(**{**base, **kwargs})
    ElectionConfig(**base)  # the defaults work


def test_outside_a_cluster_the_namespace_must_be_given(monkeypatch, tmp_path):
    import kubetune.leader_election as le

    monkeypatch.setattr(le, "IN_CLUSTER_NAMESPACE", tmp_path / "absent")
    with pytest.raises(ElectionError, match="--leader-election-namespace"):
        default_namespace(None)
    assert default_namespace("ops") == "ops"
    (tmp_path / "ns").write_text("kubetune-system\n")
    monkeypatch.setattr(le, "IN_CLUSTER_NAMESPACE", tmp_path / "ns")
    assert default_namespace(None) == "kubetune-system"


def test_the_operator_refuses_to_start_without_a_lease_namespace_outside_a_cluster(
    monkeypatch, tmp_path, capsys
):
    import kubetune.leader_election as le
    from kubetune import cli

    monkeypatch.setattr(le, "IN_CLUSTER_NAMESPACE", tmp_path / "absent")
    monkeypatch.delenv("KUBETUNE_LEADER_ELECTION_NAMESPACE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["operator", "-A", "--leader-elect"])
    assert exit_.value.code == 2
    assert "--leader-election-namespace" in capsys.readouterr().err
