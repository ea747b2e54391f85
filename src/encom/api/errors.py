"""The error format every API speaks: JSON `{"code": ..., "message": ...}` with the matching HTTP status."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

STATUS_BY_CODE = {
    "validation_error": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "precondition_failed": 412,
    "unavailable": 503,
    "internal_error": 500,
}


class ApiError(Exception):
    """An error with a machine code and a human message, raised by servers and clients alike."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 500)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return self.message


def error_from_body(status: int, body: bytes | bytearray, reason: str) -> ApiError:
    """The ApiError an error response carries: its JSON code and message, else its status and text."""
    try:
        data = json.loads(body)
        return ApiError(str(data["code"]), str(data["message"]), status)
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace").strip() or reason
        return ApiError("http_error", f"HTTP {status}: {text}", status)


class ValidationError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__("validation_error", message)


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__("not_found", message)


class Conflict(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__("conflict", message)


class Unauthorized(ApiError):
    def __init__(self, message: str = "invalid or missing key") -> None:
        super().__init__("unauthorized", message)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error leave the server as `{"code", "message"}`."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = _describe_validation(exc).encode(errors="backslashreplace").decode()  # a refused surrogate key
        return JSONResponse({"code": "validation_error", "message": message}, status_code=400)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
