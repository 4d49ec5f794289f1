"""The operator's log during an API server outage: one WARNING line per window instead of a traceback per
failed reconcile (kubetune.manager.ApiOutageFilter); other errors keep their traceback."""

from __future__ import annotations

import logging
import sys

from kubetune.manager import ApiOutageFilter
from kubetune.reconcile.client import ApiException


def failed_record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:  # noqa: BLE001 - the record is what the queue's log.exception makes
        return logging.LogRecord("kubetune.queue", logging.ERROR, __file__, 1, "reconcile of %s %s/%s failed",
                                 ("finetunejob", "ns", "a"), sys.exc_info())  # fmt: skip


def test_an_outage_is_one_warning_per_window_with_the_count():
    now = [0.0]
    outage = ApiOutageFilter(window=10, clock=lambda: now[0])
    first = failed_record(ApiException(0, "NewConnectionError", "Connection refused"))
    assert outage.filter(first)
    assert first.levelname == "WARNING" and first.exc_info is None
    assert first.getMessage() == (
        "reconcile of finetunejob ns/a failed: the API server is unavailable (no connection: NewConnectionError); "
        "retrying with backoff"
    )
    for status in (0, 429, 503, 503):
        now[0] += 1
        assert not outage.filter(failed_record(ApiException(status, "x", '{"message": "etcd is away"}')))
    now[0] = 10.5
    later = failed_record(
        ApiException(503, "Service Unavailable", '{"message": "apiserver is shutting down"}')
    )
    assert outage.filter(later)
    assert "(503 apiserver is shutting down); 4 more like it in the last 10 s" in later.getMessage()


def test_other_errors_keep_their_level_and_traceback():
    outage = ApiOutageFilter(window=10, clock=lambda: 0.0)
    for exc in (ApiException(422, "Invalid", "{}"), ApiException(403, "Forbidden", "{}"), KeyError("spec")):
        record = failed_record(exc)
        assert outage.filter(record)
        assert record.levelname == "ERROR" and record.exc_info is not None
