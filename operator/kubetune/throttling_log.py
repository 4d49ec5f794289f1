"""kopf's requests under API Priority and Fairness: a 429 Too Many Requests that kopf retries is logged as a
WARNING, not an ERROR.

kopf (``kopf/_cogs/clients/api.py``) retries a 429 with its ``networking.error_backoffs``, waiting at least
the server's Retry-After, and logs every retry at ERROR ("Request attempt #1/9 failed; will retry"). A
throttled operator is working as the cluster's administrator asked, so a burst would fill the log with
ERROR lines that need nobody's attention. Only those records are lowered; when kopf gives up
("escalating") and every other error stays an ERROR.
"""

from __future__ import annotations

import logging


class ThrottledRetryLevel(logging.Filter):
    """Lowers kopf's "will retry" records of a 429 to WARNING (a handler filter: sees every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf."):
            message = record.getMessage()
            if "will retry" in message and "APITooManyRequestsError" in message:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def lower_throttled_retries(root: logging.Logger | None = None) -> None:
    """Install ThrottledRetryLevel on the handlers of ROOT (the root logger), once."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, ThrottledRetryLevel) for f in handler.filters):
            handler.addFilter(ThrottledRetryLevel())


__all__ = ["ThrottledRetryLevel", "lower_throttled_retries"]
