"""`Gateway`: the app's routes and rules behind the hardened HTTP server.

Order of evaluation for a request: the control hook, if any; Sluice's ``/_sluice/*``
endpoints; a CORS preflight (when the API has CORS); ALB rules by priority; API Gateway routes
(``$default`` included); the ALB default rule; otherwise 404. Every response carries the
request id header (``apigw-requestid`` by default) and, for allowed origins, the CORS headers;
every request is logged as one JSON line on the ``sluice.gateway.access`` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import orjson

from sluice.app import App
from sluice.broker.contract import Broker
from sluice.errors import SluiceError, Unavailable
from sluice.futures import settle
from sluice.gateway.config import GatewayConfig
from sluice.gateway.cors import Cors
from sluice.gateway.errors import RouteNotFound
from sluice.gateway.openapi import openapi_document
from sluice.gateway.routing import RouteTable
from sluice.gateway.rules import RuleTable
from sluice.gateway.server import HttpServer, failure_response
from sluice.gateway.targets import Binding, Collaborators, Endpoint, SubmitAsync, build_target
from sluice.gateway.wire import JSON, Request, Response, json_response
from sluice.runtime.contract import Invoker

log = logging.getLogger("sluice.gateway")
access_log = logging.getLogger("sluice.gateway.access")

INTERNAL_PREFIX = "/_sluice/"
# A hook answering privileged requests (e.g. `sluice.gateway.control.Control`) or passing (None).
ControlHook = Callable[[Request], Response | Awaitable[Response] | None]
READY_TIMEOUT = 2.0


class Gateway:
    def __init__(
        self,
        app: App,
        broker: Broker,
        invoker: Invoker,
        submit_async: SubmitAsync,
        config: GatewayConfig | None = None,
        *,
        control: ControlHook | None = None,
    ) -> None:
        self.app = app
        self.control = control
        self.broker = broker
        self.config = config or GatewayConfig()
        c = Collaborators(app, broker, invoker, submit_async, self.config)
        self.routes = RouteTable(app.routes)
        self.rules = RuleTable(app.rules)
        # One endpoint per route and rule, built once; looked up by the spec's identity.
        self._route_endpoints: dict[int, tuple[str, Endpoint]] = {}
        for route in self.routes.routes:
            s = route.spec
            binding = Binding(
                s.route_key,
                timeout=s.timeout,
                forward_headers=s.forward_headers,
                schema=s.schema,
                accepted=s.accepted,
            )
            self._route_endpoints[id(s)] = (s.route_key, build_target(s.target, binding, c))
        self._rule_endpoints: dict[int, tuple[str, Endpoint]] = {}
        for r in app.rules:
            key = f"rule:{r.priority if r.priority is not None else 'default'}"
            binding = Binding(
                key,
                alb=True,
                multi_value_headers=r.multi_value_headers,
                timeout=r.timeout,
                forward_headers=r.forward_headers,
            )
            self._rule_endpoints[id(r)] = (key, build_target(r.target, binding, c))
        self.cors = Cors(app.cors_config) if app.cors_config is not None else None
        self._openapi = orjson.dumps(openapi_document(app))
        self._server = HttpServer(self.config, self.handle)

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, host: str, port: int) -> None:
        """Start listening (``port`` 0 picks a free one; see `port`) and return."""
        await self._server.start(host, port)
        log.info("gateway for %s listening on %s:%d", self.app.name, host, self.port)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def connections(self) -> int:
        """Open client connections (for status pages and tests)."""
        return self._server.connections

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting connections and let in-flight requests finish within ``grace`` s."""
        await self._server.close(grace)

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """The response: at once when the target answers at once (fixed responses, errors), else
        a future (a queue send) or a coroutine (a function) for the server to wait for."""
        started = time.perf_counter()
        try:
            key, answer = self._dispatch(request)
        except Exception as exc:
            failure = failure_response(request, exc, self.config.retry_after)
            return self._finish(request, "-", failure, started)
        if isinstance(answer, Response):
            return self._finish(request, key, answer, started)
        if self.cors is None and not self._logging():
            return answer  # nothing to add to it: the server answers it (or its error)
        # CORS headers or the access log to add: once the answer is in (a coroutine as a task).
        finished: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        asyncio.ensure_future(answer).add_done_callback(
            partial(self._settled, finished, request, key, started)
        )
        return finished

    def _settled(
        self,
        finished: asyncio.Future[Response],
        request: Request,
        key: str,
        started: float,
        answer: asyncio.Future[Response],
    ) -> None:
        try:
            response = answer.result()
        except BaseException as exc:  # a callback: a cancelled answer is a failure like another
            response = failure_response(request, exc, self.config.retry_after)
        settle(finished, None, self._finish(request, key, response, started))

    def _finish(self, request: Request, key: str, response: Response, started: float) -> Response:
        if self.cors is not None:
            self.cors.decorate(request, response)
        if self._logging():
            self._log(request, response, key, started)
        return response

    def _logging(self) -> bool:
        return self.config.access_log and access_log.isEnabledFor(logging.INFO)

    def _dispatch(self, request: Request) -> tuple[str, Response | Awaitable[Response]]:
        path = request.path
        if self.control is not None:
            answer = self.control(request)
            if answer is not None:
                return "control", answer
        if path.startswith(INTERNAL_PREFIX):
            return "internal", self._internal(request)
        if self.cors is not None and self.cors.is_preflight(request):
            return "cors-preflight", self.cors.preflight(request)
        rule = self.rules.match(request) if self.rules.rules else None
        if rule is not None:
            key, endpoint = self._rule_endpoints[id(rule)]
            return key, endpoint(request, {})
        found = self.routes.match(request.method, path)
        if found is not None:
            route, params = found
            key, endpoint = self._route_endpoints[id(route.spec)]
            return key, endpoint(request, params)
        if self.rules.default is not None:
            key, endpoint = self._rule_endpoints[id(self.rules.default)]
            return key, endpoint(request, {})
        raise RouteNotFound(f"no route matches {request.method} {path}")

    def _internal(self, request: Request) -> Response | Awaitable[Response]:
        name = request.path[len(INTERNAL_PREFIX) :]
        if name == "health":
            return json_response(200, {"status": "ok"})
        if name == "ready":
            return self._ready()
        if name == "openapi.json":
            return Response(200, [(b"content-type", JSON)], self._openapi)
        raise RouteNotFound(f"no Sluice endpoint {request.path}")

    async def _ready(self) -> Response:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.broker.list_queues()
        except (TimeoutError, SluiceError, OSError) as exc:
            raise Unavailable(f"the broker is not reachable: {exc!r}") from None
        return json_response(200, {"status": "ready"})

    def _log(self, request: Request, response: Response, key: str, started: float) -> None:
        line = {
            "requestId": request.request_id,
            "ip": request.client[0],
            "time": request.time,
            "method": request.method,
            "path": request.path,
            "routeKey": key,
            "status": response.status,
            "bytes": len(response.body) if response.stream is None else None,
            "durationMs": round((time.perf_counter() - started) * 1000, 3),
        }
        if response.status >= 400 and response.stream is None:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                line["error"] = orjson.loads(response.body).get("error")
        access_log.info(orjson.dumps(line).decode())
