"""Websocket endpoints: the same key check as every HTTP route (router dependencies do not run for websockets),
and refusals as plain HTTP responses in encom's error format, before the handshake completes."""

from __future__ import annotations

from fastapi import WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from encom.api.auth import key_from_header, key_matches
from encom.api.errors import ApiError, Unauthorized


def check_key(ws: WebSocket, *accepted: str) -> None:
    """Raise Unauthorized unless the handshake carries one of the accepted keys."""
    keys = tuple(k for k in accepted if k)
    if not key_matches(key_from_header(ws.headers.get("authorization")), keys):
        raise Unauthorized()


async def refuse(ws: WebSocket, error: ApiError) -> None:
    """Answer the handshake with the error's HTTP status and JSON body (close code 1008 once accepted)."""
    if ws.client_state != WebSocketState.CONNECTING:
        await ws.close(code=1008, reason=error.message[:120])
        return
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    response = JSONResponse(error.to_json(), status_code=error.status, headers=headers)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(code=1008)
