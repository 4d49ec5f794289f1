"""The operator's own writes do not queue a reconcile of their own watch events (reconcile/own_writes.py)."""

from __future__ import annotations

from kubetune.reconcile.own_writes import OwnWrites


def test_an_event_of_our_own_write_is_recognised_once():
    own = OwnWrites()
    own.record("Job", "ns", "a-trainer", "41")
    assert not own.caused_by_us("Job", "ns", "a-trainer", "40")  # an older version: someone else's
    assert not own.caused_by_us("FineTuneJob", "ns", "a-trainer", "41")  # another kind
    assert not own.caused_by_us("Job", "other", "a-trainer", "41")
    assert own.caused_by_us("Job", "ns", "a-trainer", "41")
    assert not own.caused_by_us("Job", "ns", "a-trainer", "41")  # each record answers one event


def test_unknown_versions_and_missing_facts_queue_a_reconcile():
    own = OwnWrites(max_entries=2)
    own.record("Job", "ns", "a", None)  # a write without a version records nothing
    assert not own.caused_by_us("Job", "ns", "a", None)
    for rv in ("1", "2", "3"):
        own.record("Job", "ns", "a", rv)
    assert not own.caused_by_us("Job", "ns", "a", "1")  # the oldest was dropped (bounded memory)
    assert own.caused_by_us("Job", "ns", "a", "2") and own.caused_by_us("Job", "ns", "a", "3")
    assert not own.caused_by_us("Job", None, "a", "3")
