"""One JSON shape for every error the API answers, and its OpenAPI description.

::

    {"error": {"status": 404, "code": "not_found", "message": "meter not found",
               "details": []}}

``code`` is stable (clients branch on it), ``message`` is for people,
``details`` lists field problems (validation) or policy rules. Unexpected
exceptions answer 500 ``internal_error`` and are logged; no stack trace or
exception text reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from segs.hub.accounts import AccountError

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "error_responses",
    "install_error_handlers",
]

_log = logging.getLogger(__name__)

_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    """What went wrong, its HTTP status and a stable code."""

    status: int = Field(description="the HTTP status code, repeated")
    code: str = Field(description="stable machine-readable code, e.g. not_found")
    message: str = Field(description="human-readable explanation")
    details: list[Any] = Field(
        default_factory=list, description="field errors (validation) or policy rules"
    )


class ErrorBody(BaseModel):
    """Every error response of the API."""

    error: ErrorDetail


class ApiError(Exception):
    """Raise in a route to answer an error in the API's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers


def _response(
    status: int,
    code: str,
    message: str,
    details: list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=ErrorDetail(status=status, code=code, message=message, details=details or [])
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _describe(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, expected or not, in the API's shape."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        error = cast("ApiError", exc)
        return _response(error.status, error.code, error.message, error.details, error.headers)

    async def account_error(_request: Request, exc: Exception) -> JSONResponse:
        error = cast("AccountError", exc)
        headers = {"Retry-After": "60"} if error.status == 429 else None
        return _response(error.status, error.code, error.message, error.details, headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        error = cast("StarletteHTTPException", exc)
        status = error.status_code
        message = error.detail if isinstance(error.detail, str) else _describe(status)
        return _response(status, _CODES.get(status, "error"), message, headers=error.headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        details = [
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
            for error in cast("RequestValidationError", exc).errors()
        ]
        return _response(422, "validation_error", "the request is not valid", details)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _response(500, "internal_error", "the hub could not complete the request")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(AccountError, account_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all in the API's shape."""
    return {status: {"model": ErrorBody, "description": _describe(status)} for status in statuses}
