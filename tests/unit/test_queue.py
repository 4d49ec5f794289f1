"""The work queue under load: many threads add keys at once while reconciles run in the pool. Nothing is
lost (every add is followed by a reconcile that started after it) and one key never runs twice at once."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from kubetune.reconcile.queue import LOW, NORMAL, Key, Outcome, WorkQueue, event_priority, resync_slice

KEYS = [("ns", f"obj-{i}") for i in range(20)]
THREADS = 16
ADDS_PER_THREAD = 400


class Recorder:
    """What the reconciles saw: per key, the newest add sequence number seen at each start."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq = 0
        self.added: dict[Key, int] = {}  # key -> sequence number of its latest add
        self.seen: dict[Key, int] = {}  # key -> the latest add a reconcile started after
        self.running: set[Key] = set()
        self.overlaps: list[Key] = []
        self.runs = 0

    def stamp(self, key: Key) -> None:
        with self.lock:
            self.seq += 1
            self.added[key] = self.seq

    def reconcile(self, key: Key) -> Outcome:
        with self.lock:
            if key in self.running:
                self.overlaps.append(key)
            self.running.add(key)
            self.seen[key] = self.added.get(key, 0)
            self.runs += 1
        time.sleep(random.uniform(0.001, 0.004))
        with self.lock:
            self.running.discard(key)
        roll = random.random()
        if roll < 0.05:
            raise RuntimeError("a reconcile error is retried with backoff")
        if roll < 0.10:
            return Outcome(backoff=True, requeue_after=0.01)
        if roll < 0.15:
            return Outcome(requeue_after=0.005)
        if roll < 0.20:
            return Outcome(forget=True)
        return Outcome()


async def _drain(queue: WorkQueue, rec: Recorder, timeout: float = 30.0) -> None:
    """Until every key's latest add was seen by a reconcile and the queue is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with rec.lock:
            caught_up = all(rec.seen.get(k, -1) >= n for k, n in rec.added.items())
        if caught_up and queue.idle():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"keys lost: {[k for k, n in rec.added.items() if rec.seen.get(k, -1) < n]}")


def test_many_threads_add_at_once_nothing_lost_no_key_twice():
    rec = Recorder()

    async def main() -> None:
        queue = WorkQueue("test", rec.reconcile, workers=8, backoff_base=0.001, backoff_max=0.01)
        await queue.start()
        loop_thread = threading.get_ident()
        touched_from: set[int] = set()
        original = queue._add

        def spy(key: Key, track: bool = False) -> None:  # every state change happens on the loop
            touched_from.add(threading.get_ident())
            original(key, track)

        queue._add = spy  # type: ignore[method-assign]

        def producer(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(ADDS_PER_THREAD):
                key = rnd.choice(KEYS)
                rec.stamp(key)
                if rnd.random() < 0.1:
                    queue.add_after(key, 0.001)  # the timer's add comes later than this stamp
                    queue.add(key, track=True)
                else:
                    queue.add(key)
                if rnd.random() < 0.02:
                    queue.forget(key)
                    queue.add(key)
                time.sleep(rnd.uniform(0, 0.002))  # adds keep coming while reconciles run

        threads = [threading.Thread(target=producer, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.01)
        await _drain(queue, rec)
        await queue.stop()
        assert touched_from == {loop_thread}

    asyncio.run(main())
    assert rec.overlaps == [], "a key ran twice at the same time"
    assert set(rec.seen) == set(rec.added)
    # Deduplication: far fewer reconciles than adds, yet at least one per key.
    assert len(KEYS) <= rec.runs < THREADS * ADDS_PER_THREAD


def test_outcomes_are_applied_on_the_loop():
    """requeue_after re-runs the key; backoff doubles; forget drops the key from the resync set."""
    runs: dict[Key, list[float]] = {}
    outcomes = {
        ("ns", "later"): [Outcome(requeue_after=0.05), Outcome()],
        ("ns", "flaky"): [Outcome(backoff=True), Outcome(backoff=True), Outcome()],
        ("ns", "gone"): [Outcome(forget=True)],
    }

    def reconcile(key: Key) -> Outcome:
        runs.setdefault(key, []).append(time.monotonic())
        return outcomes[key].pop(0)

    async def main() -> WorkQueue:
        queue = WorkQueue("outcomes", reconcile, workers=2, backoff_base=0.05, backoff_max=1)
        await queue.start()
        for key in outcomes:
            queue.add(key, track=True)
        deadline = time.monotonic() + 5
        while any(outcomes.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await queue.stop()
        return queue

    queue = asyncio.run(main())
    assert all(not left for left in outcomes.values()), outcomes
    later = runs[("ns", "later")]
    assert len(later) == 2 and later[1] - later[0] >= 0.04
    flaky = runs[("ns", "flaky")]
    assert len(flaky) == 3 and (flaky[2] - flaky[1]) > (flaky[1] - flaky[0]) * 1.5  # 0.05 s, then 0.1 s
    assert ("ns", "gone") not in queue.known and ("ns", "later") in queue.known


def test_adds_before_start_and_after_stop_are_dropped():
    queue = WorkQueue("idle", lambda key: Outcome())
    queue.add(("ns", "a"))
    queue.forget(("ns", "a"))
    assert queue.stats()["queued"] == 0


# ---------------------------------------------------------------------------------------------------------
# New work first: priorities (controller-runtime's priority queue)


class Gate:
    """A reconcile that records the order of keys and holds the one named ``hold`` until ``open()``."""

    def __init__(self, hold: str = "gate", outcomes: dict[str, list[Outcome]] | None = None) -> None:
        self.order: list[str] = []
        self.hold = hold
        self.outcomes = outcomes or {}
        self.entered = threading.Event()
        self._released = threading.Event()

    def open(self) -> None:
        self._released.set()

    def reconcile(self, key: Key) -> Outcome:
        self.order.append(key[1])
        if key[1] == self.hold:
            self.entered.set()
            assert self._released.wait(30), "the gate was never opened"
        left = self.outcomes.get(key[1])
        return left.pop(0) if left else Outcome()


async def _until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def test_a_new_key_is_taken_before_thousands_of_resync_keys():
    """3,000 keys of a restart's listing are queued (LOW) while one worker is busy; a new object's key
    (NORMAL) added after all of them is the next one taken, and every listed key still runs, in order."""
    gate = Gate()
    listed = [("ns", f"old-{i:04d}") for i in range(3000)]

    async def main() -> None:
        queue = WorkQueue("prio", gate.reconcile, workers=1)
        await queue.start()
        queue.add(("ns", "gate"))
        await _until(gate.entered.is_set, "the gate's reconcile to start")
        for key in listed:
            queue.add(key, track=True, priority=LOW)
        queue.add(("ns", "new"), track=True)
        await _until(lambda: queue.stats()["queued"] == len(listed) + 1, "every key queued")
        assert queue.stats()["queued_low"] == len(listed)
        gate.open()
        await _until(queue.idle, "the queue to drain")
        await queue.stop()

    asyncio.run(main())
    assert gate.order[:2] == ["gate", "new"]
    assert gate.order[2:] == [name for _, name in listed]  # nothing lost, first in first out among them


def test_a_key_keeps_the_highest_priority_it_was_added_with():
    """A listed key (LOW) that then gets a real event is raised to NORMAL (and runs once); a NORMAL key
    listed again stays NORMAL; a LOW key added while it runs runs again at LOW, a NORMAL one at NORMAL."""
    gate = Gate()

    async def main() -> None:
        queue = WorkQueue("prio", gate.reconcile, workers=1)
        await queue.start()
        queue.add(("ns", "gate"))
        await _until(gate.entered.is_set, "the gate's reconcile to start")
        queue.add(("ns", "low-1"), priority=LOW)
        queue.add(("ns", "raised"), priority=LOW)
        queue.add(("ns", "low-2"), priority=LOW)
        queue.add(("ns", "normal"))
        queue.add(("ns", "normal"), priority=LOW)  # stays NORMAL
        queue.add(("ns", "raised"))  # NORMAL now: behind "normal", before every LOW key
        queue.add(("ns", "gate"), priority=LOW)  # added while it runs: runs again, at LOW
        await _until(lambda: queue.stats()["queued"] == 4, "four keys queued")
        gate.hold = ""  # its second run passes
        gate.open()
        await _until(queue.idle, "the queue to drain")
        await queue.stop()

    asyncio.run(main())
    assert gate.order == ["gate", "normal", "raised", "low-1", "low-2", "gate"]


def test_a_timer_keeps_the_priority_of_the_reconcile_that_set_it():
    """A resync key (LOW) whose reconcile asks to run again later comes back at LOW: a new key queued after
    the timer fired still goes first."""
    gate = Gate(outcomes={"old": [Outcome(requeue_after=0.01)]})

    async def main() -> None:
        queue = WorkQueue("prio", gate.reconcile, workers=1)
        await queue.start()
        queue.add(("ns", "old"), priority=LOW)
        await _until(lambda: gate.order == ["old"] and queue.stats()["timers"] == 1, "old's timer")
        queue.add(("ns", "gate"))
        await _until(gate.entered.is_set, "the gate's reconcile to start")
        await _until(lambda: queue.stats()["timers"] == 0 and queue.stats()["queued"] == 1, "the timer fired")
        queue.add(("ns", "new"))
        gate.open()
        await _until(queue.idle, "the queue to drain")
        await queue.stop()

    asyncio.run(main())
    assert gate.order == ["old", "gate", "new", "old"]


def test_the_priority_of_a_watch_event():
    listed_seen = {"metadata": {"generation": 3}, "status": {"observedGeneration": 3}}
    listed_edited = {"metadata": {"generation": 4}, "status": {"observedGeneration": 3}}
    listed_new = {"metadata": {"generation": 1}}
    assert event_priority(None, listed_seen) == LOW  # a restart's listing: nothing known to have changed
    assert event_priority(None, listed_edited) == NORMAL  # edited while the operator was away
    assert event_priority(None, listed_new) == NORMAL  # created while the operator was away
    assert event_priority(None) == LOW  # a child from a listing
    for real in ("ADDED", "MODIFIED", "DELETED"):
        assert event_priority(real, listed_seen) == NORMAL
        assert event_priority(real) == NORMAL


def test_the_resync_queues_each_key_once_a_period_spread_over_it():
    """The periodic resync queues the known keys a slice at a time, in slice order, each once a period (all at
    once, every object's reconcile, and the reads of those whose children's memory expired, came in one
    burst)."""
    keys = [("ns", f"obj-{i:03d}") for i in range(300)]
    slices = [resync_slice(k) for k in keys]
    assert len(set(slices)) >= 50 and max(slices.count(s) for s in set(slices)) <= 20  # spread evenly
    order: list[Key] = []

    def reconcile(key: Key) -> Outcome:
        order.append(key)
        return Outcome()

    async def main() -> None:
        queue = WorkQueue("spread", reconcile, workers=1, resync_seconds=3.0)
        queue.known.update(keys)  # known (as after their first reconciles), nothing queued
        await queue.start()
        await _until(lambda: len(order) >= len(keys), "a full period of resyncs")
        await queue.stop()

    asyncio.run(main())
    first_period = order[: len(keys)]
    assert sorted(first_period) == sorted(keys)  # each known key once
    turns = [resync_slice(k) for k in first_period]
    assert turns == sorted(turns), "keys were not queued slice by slice"
