"""How the operator's requests are retried: urllib3's retries, plus a 429 Too Many Requests for every method
after the server's Retry-After (API Priority and Fairness rejects a request before it runs, so a PATCH sent
again cannot apply twice)."""

from __future__ import annotations

import urllib3

THROTTLED_RETRIES = 8
"""How often one request is sent again after 429 Too Many Requests before the caller sees the 429."""


class ThrottledRetry(urllib3.util.Retry):
    """urllib3's retries (connection errors; idempotent requests on a 503 with Retry-After), plus: a 429 Too
    Many Requests is retried for every method, after the server's Retry-After.

    The API server answers 429 when API Priority and Fairness (or --max-requests-inflight) rejects a
    request, before it is executed, so sending a POST or PATCH again cannot apply it twice. urllib3 by
    default retries only idempotent methods, and the package sends applies and merge patches as PATCH: a
    throttled operator would see every rejected write as a failed reconcile."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429:
            return self.respect_retry_after_header and self.total != 0 and self.status != 0
        return super().is_retry(method, status_code, has_retry_after)


def throttled_retries() -> ThrottledRetry:
    """The retry policy of the operator's requests (``Configuration.retries``)."""
    return ThrottledRetry(
        total=THROTTLED_RETRIES,
        connect=3,
        read=3,  # idempotent methods only (urllib3's allowed_methods): a lost PATCH response is not resent
        redirect=3,
        status=THROTTLED_RETRIES,
        backoff_factor=0.5,  # without a Retry-After: 0.5 s, 1 s, 2 s, ... (at most backoff_max)
        backoff_max=10,
        respect_retry_after_header=True,
        raise_on_status=False,  # retries used up: the 429 itself goes to the caller (ApiException 429)
    )


__all__ = ["THROTTLED_RETRIES", "ThrottledRetry", "throttled_retries"]
