"""A work queue like controller-runtime's: keys (namespace, name) are deduplicated, one key is never
processed twice at once, a key added while it is processed runs again afterwards, delayed re-adds
(timers) and per-key exponential backoff for errors and unresolved problems.

New work never waits behind old work (controller-runtime's priority queue): a key has a priority, and a
worker always takes the highest one first (first in, first out within a priority). A watch event that shows
a change queues its key at NORMAL priority; a key from a listing (the initial list after a restart, a relist)
whose spec its controller has already seen, and every key of the periodic resync, at LOW priority. A key
queued twice keeps the higher of its priorities; a timer or a retry keeps the priority of the reconcile that
asked for it. Without this, a restart among thousands of objects queued every one of them ahead of a new
FineTuneJob, which then waited minutes for its Job (docs/benchmarks.md, "New work first").

The periodic resync queues every known key once per period, spread over it: a key's turn comes at its own
point of the period (``resync_slice``, a hash of the key), so 10,000 objects are not all queued, reconciled
and (those whose children's memory expired) read at the same moment every period.

Reconciles are synchronous functions (the Kubernetes client is blocking); they run in a thread pool.
The queue's state changes only on its event loop: a reconcile hands its ``Outcome`` back (the worker
coroutine applies it on the loop, ``forget`` included), and ``add``/``add_after``/``forget`` called from
any other thread are passed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubetune import metrics

log = logging.getLogger("kubetune.queue")

Key = tuple[str, str]

NORMAL = 0
"""The priority of new work: a watch event that shows a change, or a spec its controller has not seen yet."""
LOW = -100
"""The priority of a key nothing is known to have changed for: a listing's unchanged object, the periodic
resync (controller-runtime's LowPriority)."""


def event_priority(event_type: str | None, body: Mapping[str, Any] | None = None) -> int:
    """The priority of the reconcile a watch event of an object asks for.

    kopf gives the objects of a listing (the initial list after a (re)start, the relist after a watch's
    410 Gone) the event type None. Such an object's reconcile only checks that nothing changed while the
    operator was not watching (LOW), unless BODY, the controller's own object, shows a spec it has not seen
    yet (``metadata.generation`` beyond ``status.observedGeneration``: created or edited meanwhile): that is
    new work (NORMAL). A child from a listing (BODY None) is LOW. Any other event shows a change (NORMAL)."""
    if event_type is not None:
        return NORMAL
    if body is None:
        return LOW
    generation = (body.get("metadata") or {}).get("generation")
    seen = (body.get("status") or {}).get("observedGeneration")
    return LOW if generation is not None and seen == generation else NORMAL


RESYNC_SLICES = 60
"""The resync period is cut in this many slices; each key is queued in one of them (``resync_slice``)."""


def resync_slice(key: Key, slices: int = RESYNC_SLICES) -> int:
    """The slice of the resync period in which KEY is queued: stable for a key, spread evenly over keys."""
    return zlib.crc32(f"{key[0]}/{key[1]}".encode()) % slices


@dataclass(frozen=True)
class Outcome:
    """What a reconcile tells the queue about its key."""

    requeue_after: float | None = None
    """Reconcile the key again after this many seconds (a deadline, a TTL, waiting for something)."""
    backoff: bool = False
    """An error or a problem the user must fix: retry with exponential backoff."""
    forget: bool = False
    """The object is gone: drop the key's timers, failure count and resync membership."""


class WorkQueue:
    def __init__(
        self,
        name: str,
        reconcile: Callable[[Key], Outcome],
        *,
        workers: int = 8,
        resync_seconds: float | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.resync_seconds = resync_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # Entries (-priority, order, key): the highest priority first, then the oldest. A key raised to a higher
        # priority gets a second entry; the first is stale (its (priority, order) no longer in _queued) and
        # skipped when taken.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Key]] | None = None
        self._order = itertools.count()
        self._queued: dict[Key, tuple[int, int]] = {}  # key -> (priority, order) of its live entry
        self._processing: dict[Key, int] = {}  # key -> the priority it was taken with
        self._dirty: dict[Key, int] = {}  # added while processing -> the highest priority it was added with
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.known: set[Key] = set()
        self._depth = metrics.QUEUE_DEPTH.labels(name)

    # ---------------------------------------------------------------------------------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run FN(*ARGS) now when called on the loop's thread; else schedule it there. False when the
        queue is not started (the call is dropped, as a stopped queue does)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)
        return True

    def add(self, key: Key, *, track: bool = False, priority: int = NORMAL) -> None:
        """Reconcile KEY soon, before every key of a lower PRIORITY (TRACK: also keep it in the periodic
        resync). Safe from any thread."""
        if priority == NORMAL:
            self._on_loop(self._add, key, track)
        else:
            self._on_loop(self._add_at, key, track, priority)

    def add_after(self, key: Key, delay: float, priority: int = NORMAL) -> None:
        """Reconcile KEY after DELAY seconds (an earlier timer wins over a later one). Safe from any thread."""
        self._on_loop(self._add_after, key, delay, priority)

    def forget(self, key: Key) -> None:
        """Drop KEY's timers, failures and resync membership. Safe from any thread."""
        self._on_loop(self._forget, key)

    # the state changes, on the loop only ------------------------------------------------------------
    def _add(self, key: Key, track: bool = False) -> None:
        self._add_at(key, track, NORMAL)

    def _add_at(self, key: Key, track: bool, priority: int) -> None:
        if track:
            self.known.add(key)
        self._put(key, priority)

    def _put(self, key: Key, priority: int) -> None:
        if self._queue is None:
            return
        if key in self._processing:
            self._dirty[key] = max(priority, self._dirty.get(key, priority))
            return
        queued = self._queued.get(key)
        if queued is not None and queued[0] >= priority:
            return
        entry = (priority, next(self._order))
        self._queued[key] = entry
        self._queue.put_nowait((-entry[0], entry[1], key))
        self._depth.set(len(self._queued))

    def _add_after(self, key: Key, delay: float, priority: int = NORMAL) -> None:
        assert self._loop is not None
        when = self._loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            priority = max(priority, existing[2])
            if existing[0] <= when:
                self._timers[key] = (existing[0], existing[1], priority)
                return
            existing[1].cancel()
        handle = self._loop.call_later(delay, self._fire, key)
        self._timers[key] = (when, handle, priority)

    def _fire(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        self._put(key, timer[2] if timer is not None else NORMAL)

    def _forget(self, key: Key) -> None:
        self.known.discard(key)
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def _finish(self, key: Key, outcome: Outcome, priority: int = NORMAL) -> None:
        """Apply a reconcile's outcome to KEY's state (PRIORITY: the one it was taken with; its timers and
        retries keep it)."""
        if outcome.forget:
            self._forget(key)
        elif outcome.backoff:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
            delay = min(self.backoff_max, self.backoff_base * (2**n))
            if outcome.requeue_after is not None:
                delay = min(delay, outcome.requeue_after)
            self._add_after(key, delay, priority)
        else:
            self._failures.pop(key, None)
            if outcome.requeue_after is not None:
                self._add_after(key, outcome.requeue_after, priority)

    # ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.PriorityQueue()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"reconcile-{self.name}")
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}") for i in range(self.workers)
        ]
        if self.resync_seconds:
            self._tasks.append(asyncio.create_task(self._resync(), name=f"{self.name}-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop = None

    async def _resync(self) -> None:
        step = (self.resync_seconds or 600) / RESYNC_SLICES
        while True:
            for part in range(RESYNC_SLICES):
                await asyncio.sleep(step)
                for key in [k for k in self.known if resync_slice(k) == part]:
                    self._put(key, LOW)

    async def _take(self) -> tuple[Key, int]:
        """The next key (the highest priority, then the oldest) and its priority; stale entries skipped."""
        assert self._queue is not None
        while True:
            negative, order, key = await self._queue.get()
            if self._queued.get(key) == (-negative, order):
                del self._queued[key]
                self._depth.set(len(self._queued))
                return key, -negative

    async def _worker(self) -> None:
        assert self._queue is not None and self._loop is not None
        loop = self._loop
        while True:
            key, priority = await self._take()
            self._processing[key] = priority
            try:
                try:
                    outcome = await loop.run_in_executor(self._pool, self.reconcile, key)
                except Exception:  # noqa: BLE001 - an error never stops the operator
                    log.exception("reconcile of %s %s/%s failed", self.name, *key)
                    outcome = Outcome(backoff=True)
                self._finish(key, outcome, priority)
            finally:
                del self._processing[key]
                again = self._dirty.pop(key, None)
                if again is not None:
                    self._put(key, again)

    def idle(self) -> bool:
        """Nothing queued or running (timers may be pending)."""
        return not self._queued and not self._processing and not self._dirty

    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self._queued),
            "queued_low": sum(1 for priority, _ in self._queued.values() if priority < NORMAL),
            "processing": len(self._processing),
            "timers": len(self._timers),
            "known": len(self.known),
            "ts": time.time(),
        }
