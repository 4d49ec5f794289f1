"""Polling for the tests: wait until the world (API server, node, process) shows what a test expects."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll FN until it returns something truthy and return that; after TIMEOUT seconds fail with WHAT and
    FN's last value. An error FN raises counts as a value that is not there yet (the object is not created
    yet, the API server restarts): polling goes on, and the failure message shows the last error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
