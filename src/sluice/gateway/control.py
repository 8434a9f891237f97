"""The control API next to the routes: Lambda's Invoke API (so `sluice invoke`, `sluice.Client`
and even boto3's Lambda client can invoke functions) and the platform's status.

It is a privileged surface. It answers only when the platform enables it: `sluice dev` enables it
for loopback clients; any role enables it for clients presenting `SLUICE_CONTROL_TOKEN` as a
bearer token. Everyone else gets the ordinary 404 of an unknown route.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from sluice.errors import SluiceError, ValidationError
from sluice.gateway.wire import JSON, Request, Response, error_response, json_response

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([A-Za-z0-9_.:-]+)/invocations$")
STATUS_PATH = "/_sluice/status"
MAPPING_PATH = re.compile(r"^/_sluice/mappings/([^/]+)/(enable|disable)$")
CONTROL_PREFIXES = ("/2015-03-31/functions/", "/_sluice/")
LOG_TAIL = 4096  # Lambda returns the last 4 KB of the log with LogType=Tail

ControlHandler = Callable[[Request], Awaitable[Response] | None]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Control:
    def __init__(self, platform: Any, *, loopback: bool, token: str | None) -> None:
        self._platform = platform
        self._loopback = loopback
        self._token = token.encode() if token else None

    def _allowed(self, request: Request) -> bool:
        if self._token is not None:
            given = (request.header("authorization") or "").removeprefix("Bearer ").encode()
            if hmac.compare_digest(given, self._token):
                return True
        return self._loopback and _is_loopback(request.client[0])

    def __call__(self, request: Request) -> Awaitable[Response] | None:
        """The answer to a control request, or None when the request is not one (decided at
        once: every route's request passes here)."""
        if not request.path.startswith(CONTROL_PREFIXES):
            return None  # every route's request passes here: the common case costs one check
        post = request.method == "POST"
        match = INVOKE_PATH.match(request.path) if post else None
        toggle = MAPPING_PATH.match(request.path) if post else None
        is_status = request.method == "GET" and request.path == STATUS_PATH
        if (match is None and toggle is None and not is_status) or not self._allowed(request):
            return None
        return self._answer(request, match, toggle, is_status)

    async def _answer(
        self,
        request: Request,
        match: re.Match[str] | None,
        toggle: re.Match[str] | None,
        is_status: bool,
    ) -> Response:
        try:
            if is_status:
                return json_response(200, await self._platform.status())
            if toggle is not None:
                return await self._toggle(unquote(toggle.group(1)), toggle.group(2) == "enable")
            assert match is not None
            return await self._invoke(match.group(1).split(":")[0], request)
        except SluiceError as exc:
            response = error_response(exc)
            response.headers.append((b"x-amzn-errortype", exc.code.encode()))
            return response

    async def _toggle(self, mapping: str, enabled: bool) -> Response:
        dispatcher = self._platform.dispatcher
        if dispatcher is None:
            raise ValidationError("this platform runs no dispatcher (a gateway-only role)")
        await dispatcher.set_enabled(mapping, enabled)
        return json_response(200, {"mapping": mapping, "enabled": enabled})

    async def _invoke(self, function: str, request: Request) -> Response:
        kind = request.header("x-amz-invocation-type") or "RequestResponse"
        payload = request.body or b"{}"
        if kind == "Event":
            request_id = await self._platform.submit(function, payload)
            return Response(202, [(b"x-amzn-requestid", request_id.encode())])
        if kind == "DryRun":
            self._platform.app.get_function(function)
            return Response(204)
        if kind != "RequestResponse":
            raise ValidationError(
                f"X-Amz-Invocation-Type {kind!r} is not one of RequestResponse, Event, DryRun"
            )
        result = await self._platform.invoke(function, payload)
        headers = [
            (b"content-type", JSON),
            (b"x-amzn-requestid", result.request_id.encode()),
            (b"x-amz-executed-version", b"$LATEST"),
        ]
        if result.function_error:
            headers.append((b"x-amz-function-error", result.function_error.encode()))
        if (request.header("x-amz-log-type") or "") == "Tail":
            tail = result.logs.encode()[-LOG_TAIL:]
            headers.append((b"x-amz-log-result", base64.b64encode(tail)))
        return Response(200, headers, result.payload)
