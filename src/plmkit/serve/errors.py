"""The server's errors, in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

A request the server cannot serve raises ApiError with its HTTP status (400 bad input, 401 a missing or
wrong API key, 404 an unknown model or route, 413 a body over the size limit, 429 a full queue); app.py
turns it into that JSON body. Statuses of 500 and above are for the server's own faults only: the openai
client retries them, so bad input must never get one.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client: HTTP status, message, OpenAI error type, offending parameter, code."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unknown_model(name: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{name}` does not exist; this server serves `{served}` (see GET /v1/models)",
        param="model",
        code="model_not_found",
    )


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Incorrect or missing API key: send the key given to `plm serve --api-key` as "
        "`Authorization: Bearer KEY`",
        code="invalid_api_key",
    )


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body has {size} bytes, more than this server accepts ({limit}, plm serve --max-body-bytes)",
        code="request_too_large",
    )


def queue_full(limit: int) -> ApiError:
    return ApiError(
        429,
        f"The server is busy: {limit} prompts are already waiting for a decoding slot (plm serve --max-queue); "
        "retry later",
        type="rate_limit_error",
        code="queue_full",
    )
