"""The work queue under load: many threads add keys at once while reconciles run in the pool. Nothing is
lost (every add is followed by a reconcile that started after it) and one key never runs twice at once."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from kubetune.reconcile.queue import Key, Outcome, WorkQueue

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
