"""A work queue like controller-runtime's: keys (namespace, name) are deduplicated, one key is never
processed twice at once, a key added while it is processed runs again afterwards, delayed re-adds
(timers) and per-key exponential backoff for errors and unresolved problems.

Reconciles are synchronous functions (the Kubernetes client is blocking); they run in a thread pool.
The queue's state changes only on its event loop: a reconcile hands its ``Outcome`` back (the worker
coroutine applies it on the loop, ``forget`` included), and ``add``/``add_after``/``forget`` called from
any other thread are passed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubetune import metrics

log = logging.getLogger("kubetune.queue")

Key = tuple[str, str]


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
        self._queue: asyncio.Queue[Key] | None = None
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
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

    def add(self, key: Key, *, track: bool = False) -> None:
        """Reconcile KEY soon (TRACK: also keep it in the periodic resync). Safe from any thread."""
        self._on_loop(self._add, key, track)

    def add_after(self, key: Key, delay: float) -> None:
        """Reconcile KEY after DELAY seconds (an earlier timer wins over a later one). Safe from any thread."""
        self._on_loop(self._add_after, key, delay)

    def forget(self, key: Key) -> None:
        """Drop KEY's timers, failures and resync membership. Safe from any thread."""
        self._on_loop(self._forget, key)

    # the state changes, on the loop only ------------------------------------------------------------
    def _add(self, key: Key, track: bool = False) -> None:
        if track:
            self.known.add(key)
        if self._queue is None:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)
        self._depth.set(len(self._queued))

    def _add_after(self, key: Key, delay: float) -> None:
        assert self._loop is not None
        when = self._loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        handle = self._loop.call_later(delay, self._fire, key)
        self._timers[key] = (when, handle)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._add(key)

    def _forget(self, key: Key) -> None:
        self.known.discard(key)
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def _finish(self, key: Key, outcome: Outcome) -> None:
        """Apply a reconcile's outcome to KEY's state."""
        if outcome.forget:
            self._forget(key)
        elif outcome.backoff:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
            delay = min(self.backoff_max, self.backoff_base * (2**n))
            if outcome.requeue_after is not None:
                delay = min(delay, outcome.requeue_after)
            self._add_after(key, delay)
        else:
            self._failures.pop(key, None)
            if outcome.requeue_after is not None:
                self._add_after(key, outcome.requeue_after)

    # ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.Queue()
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
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop = None

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds or 600)
            for key in list(self.known):
                self._add(key)

    async def _worker(self) -> None:
        assert self._queue is not None and self._loop is not None
        loop = self._loop
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._depth.set(len(self._queued))
            self._processing.add(key)
            try:
                try:
                    outcome = await loop.run_in_executor(self._pool, self.reconcile, key)
                except Exception:  # noqa: BLE001 - an error never stops the operator
                    log.exception("reconcile of %s %s/%s failed", self.name, *key)
                    outcome = Outcome(backoff=True)
                self._finish(key, outcome)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self._add(key)

    def idle(self) -> bool:
        """Nothing queued or running (timers may be pending)."""
        return not self._queued and not self._processing and not self._dirty

    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self._queued),
            "processing": len(self._processing),
            "timers": len(self._timers),
            "known": len(self.known),
            "ts": time.time(),
        }
