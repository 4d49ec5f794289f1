"""runtime.InFlight: what a stopping leader waits for before it lets go of its lease (manager.drain_reconciles)."""

from __future__ import annotations

import threading

from kubetune.runtime import InFlight


def test_drain_waits_for_the_reconciles_running_and_only_for_them():
    in_flight = InFlight()
    assert in_flight.drain(0.01) and in_flight.running == 0
    entered, release = threading.Event(), threading.Event()

    def reconcile() -> None:
        with in_flight:
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=reconcile)
    worker.start()
    entered.wait(10)
    assert in_flight.running == 1 and not in_flight.drain(0.05)  # still running: not drained
    release.set()
    assert in_flight.drain(10) and in_flight.running == 0
    worker.join(10)
