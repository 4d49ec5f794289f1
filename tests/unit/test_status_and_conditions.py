"""The shared conditions and status-write semantics (reconcile/conditions.py, reconcile/status.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune.reconcile.conditions import (
    KStatus,
    is_true,
    ordered,
    seconds_in_state,
    set_condition,
    set_kstatus,
)
from kubetune.reconcile.status import merge_patch, status_patch
from kubetune.reconcile.writes import EventRecorder

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FIELDS = ("phase", "conditions", "startTime", "lastRollout")


def test_last_transition_time_moves_only_when_the_status_flips():
    conds: dict[str, dict[str, Any]] = {}
    set_condition(conds, "Running", False, "Pending", "waiting", generation=1, now=T0)
    first = conds["Running"]["lastTransitionTime"]
    set_condition(conds, "Running", False, "Unschedulable", "no GPU", generation=2, now=T0 + dt.timedelta(60))
    assert conds["Running"]["lastTransitionTime"] == first and conds["Running"]["observedGeneration"] == 2
    assert seconds_in_state(conds["Running"], T0 + dt.timedelta(seconds=90)) == 90
    set_condition(conds, "Running", True, "Running", "1/1", generation=2, now=T0 + dt.timedelta(seconds=90))
    assert conds["Running"]["lastTransitionTime"] != first and is_true(conds, "Running")


def test_kstatus_conditions_are_never_reconciling_and_stalled_at_once():
    conds: dict[str, dict[str, Any]] = {}
    both = KStatus(False, "Broken", "m", reconciling=("Working", "w"), stalled=("Broken", "cannot go on"))
    set_kstatus(conds, both, generation=3, now=T0)
    assert (conds["Stalled"]["status"], conds["Reconciling"]["status"]) == ("True", "False")
    assert conds["Stalled"]["message"] == "cannot go on"
    set_kstatus(conds, KStatus(True, "Succeeded", idle_reason="Succeeded"), generation=3, now=T0)
    assert [conds[t]["status"] for t in ("Ready", "Reconciling", "Stalled")] == ["True", "False", "False"]
    assert all(c["observedGeneration"] == 3 and c["reason"] for c in conds.values())
    assert [c["type"] for c in ordered(conds, ("Running",))] == ["Ready", "Reconciling", "Stalled"]


def test_status_patch_is_a_merge_patch_of_owned_fields_only():
    obj = {
        "status": {
            "phase": "Running",
            "startTime": "2026-01-01T00:00:00Z",
            "lastRollout": {"revision": "a", "result": "Passed", "message": "ok"},
            "progress": {"step": 5},  # someone else's (the trainer's)
        }
    }
    assert status_patch(obj, {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                              "lastRollout": {"revision": "a", "result": "Passed", "message": "ok"}}, FIELDS) is None  # fmt: skip
    patch = status_patch(
        obj, {"phase": "Pending", "startTime": None, "lastRollout": {"revision": "b"}}, FIELDS
    )
    assert patch == {
        "phase": "Pending",
        "startTime": None,
        "lastRollout": {"revision": "b", "result": None, "message": None},
    }
    assert "progress" not in patch
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == {"a": {"c": None}}


class _EventSink:
    def __init__(self) -> None:
        self.written: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.written.append((type_, reason, message))


def test_event_recorder_writes_the_same_event_once_per_window():
    sink = _EventSink()
    clock = [0.0]
    recorder = EventRecorder(sink, window=60, clock=lambda: clock[0])  # type: ignore[arg-type]
    obj = {"metadata": {"name": "t", "namespace": "ns", "uid": "u"}}
    refused = ("Warning", "ChildRejected", "quota")
    assert recorder.emit(obj, [refused]) and recorder.emit(obj, [refused]) == []
    recorder.emit({"metadata": {"name": "o", "namespace": "ns", "uid": "v"}}, [refused])  # another object
    clock[0] = 61
    recorder.emit(obj, [refused, ("Normal", "JobCreated", "created")])
    assert sink.written == [refused, refused, refused, ("Normal", "JobCreated", "created")]


def test_event_recorder_forgets_what_fell_out_of_its_window():
    clock = [0.0]
    recorder = EventRecorder(_EventSink(), window=60, clock=lambda: clock[0])  # type: ignore[arg-type]
    for uid in ("a", "b", "c"):
        recorder.emit({"metadata": {"name": uid, "namespace": "ns", "uid": uid}}, [("Normal", "R", "m")])
    assert len(recorder) == 3
    clock[0] = 61
    recorder.emit({"metadata": {"name": "d", "namespace": "ns", "uid": "d"}}, [("Normal", "R", "m")])
    assert len(recorder) == 1  # only d's: a, b and c would not be deduplicated any more
