"""OpenAI's error body, and the errors the gateway answers with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# OpenAI's error types by HTTP status (the SDK picks its exception class from the status alone).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


@dataclass
class ApiError(Exception):
    """An answer that is not a success: HTTP STATUS with OpenAI's error body.

    ``retry`` tells the OpenAI SDK whether sending the same request again may succeed (its
    ``x-should-retry`` header): the SDK retries 409 and 5xx answers by default, which is wrong for a
    conflict that a retry cannot resolve."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry: bool | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry is not None:
            headers["x-should-retry"] = "true" if self.retry else "false"
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="kubetune"'
        return headers


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def not_found(what: str, ident: str, namespace: str) -> ApiError:
    return ApiError(404, f"no {what} {ident!r} in namespace {namespace}", None, "not_found", retry=False)
