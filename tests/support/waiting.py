"""Polling for the tests: wait until the world (API server, node, process) shows what a test expects.

One function, ``wait_for``, for every wait of the suite: it returns what it waited for, and when the time
is up it fails with an AssertionError that names what was awaited and the last thing seen. A wait that
can never succeed any more (a process it depends on exited) says so at once through ``fail_if``.

Never ``time.sleep`` and then assert that something did not happen: wait first for evidence that the
actor looked (tests/support/operator.py: ``Operator.reconciles``), then assert.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    fn: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
    *,
    fail_if: Callable[[], str | None] | None = None,
) -> Any:
    """Poll FN until it returns something truthy and return that; after TIMEOUT seconds fail with WHAT and
    FN's last value. An error FN raises counts as a value that is not there yet (the object is not created
    yet, the API server restarts): polling goes on, and the failure message shows the last error.

    FAIL_IF, called after each unsuccessful poll, returns a reason to stop waiting at once (e.g. "the
    operator exited: <log tail>"), or None to go on; an error it raises counts as None."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if fail_if is not None and (reason := _reason(fail_if)):
            raise AssertionError(f"gave up waiting for {what}: {reason}; last: {last!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def _reason(fail_if: Callable[[], str | None]) -> str | None:
    try:
        return fail_if()
    except Exception:  # noqa: BLE001 - a check that cannot look now (the API server restarts) says nothing
        return None


def process_exited(proc: Any, name: str = "the process", output: Callable[[], str] | None = None):
    """A FAIL_IF for wait_for: the reason when PROC (a subprocess.Popen) has exited, with OUTPUT() if given."""

    def check() -> str | None:
        if proc.poll() is None:
            return None
        return f"{name} exited with {proc.returncode}" + (f":\n{output()}" if output else "")

    return check
