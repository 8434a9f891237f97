"""Targets: what a matched route or rule does with a request.

Each target is built once per route/rule at start-up (`build_target`) into a small callable
``(request, path_parameters) -> Response``; errors are raised as `SluiceError`s for the gateway
to answer uniformly.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import orjson

from sluice.app import App, FixedResponse, Redirect, Target
from sluice.broker.contract import Broker, OutgoingMessage, SendOutcome, SendsSoon
from sluice.config import ACCOUNT_ID
from sluice.dispatch.async_invoke import async_queue_name, event_message
from sluice.errors import Throttled, ValidationError
from sluice.events.http import (
    HttpRequest,
    HttpResponse,
    alb_event,
    alb_response,
    apigw_v2_event,
    apigw_v2_response,
)
from sluice.futures import pass_outcome, settle
from sluice.gateway.actions import Fixed, RedirectTarget
from sluice.gateway.backlog import BacklogGuard
from sluice.gateway.config import GatewayConfig
from sluice.gateway.deadlines import Deadline, Deadlines
from sluice.gateway.errors import FunctionFailed, IntegrationTimeout
from sluice.gateway.proxy import ReverseProxy
from sluice.gateway.validation import BodyValidator, accepted_body
from sluice.gateway.wire import JSON, Request, Response
from sluice.runtime.contract import InvocationResult, Invoker, InvokesSoon

log = logging.getLogger("sluice.gateway")


class SubmitAsync(Protocol):
    """Stores an Event invocation of ``function`` durably; returns its request id."""

    def __call__(
        self, function: str, payload: bytes, *, request_id: str | None = None
    ) -> Awaitable[str]: ...


# FIFO queue targets take the group and deduplication ids from these request headers.
GROUP_ID_HEADER = "x-message-group-id"
DEDUP_ID_HEADER = "x-message-deduplication-id"
BODY_ENCODING_ATTRIBUTE = "sluice-body-encoding"


class Endpoint(Protocol):
    """Answers at once (a `Response`), or later: a future or a coroutine of one. Errors are
    raised (at once, or by the future or coroutine) as `SluiceError`s."""

    def __call__(
        self, request: Request, params: dict[str, str]
    ) -> Response | Awaitable[Response]: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """Where a target came from: an API Gateway route (payload 2.0) or an ALB rule."""

    route_key: str  # "$default", "GET /x", or "rule:PRIORITY" / "rule:default"
    alb: bool = False
    multi_value_headers: bool = False
    timeout: float | None = None
    forward_headers: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None  # request body JSON Schema (400 when not met)
    accepted: Mapping[str, Any] | None = None  # 202 body template for queue / async targets


@dataclass(frozen=True, slots=True)
class Collaborators:
    app: App
    broker: Broker
    invoker: Invoker
    submit_async: SubmitAsync
    config: GatewayConfig


def to_event_request(request: Request) -> HttpRequest:
    return HttpRequest(
        method=request.method,
        raw_path=request.path,
        raw_query=request.query,
        headers=request.headers,
        body=request.body,
        client_ip=request.client[0],
        # host is left empty: the events read it from the headers they decode anyway
        protocol=f"HTTP/{request.http_version}",
        request_id=request.request_id,
        time=request.time,
    )


def from_event_response(response: HttpResponse) -> Response:
    return Response(response.status, response.headers, response.body, response.reason)


class EventBuilder:
    """Turns a request into the function's event and its result back into a response."""

    def __init__(self, binding: Binding, app: App) -> None:
        self.binding = binding
        self.api_id = app.name
        self.target_group = (
            f"arn:aws:elasticloadbalancing:local:{ACCOUNT_ID}:targetgroup/"
            f"{app.name}-{binding.route_key.replace(':', '-')}/sluice"
        )

    def event(self, request: Request, params: dict[str, str]) -> bytes:
        req = to_event_request(request)
        if self.binding.alb:
            event = alb_event(
                req,
                target_group_arn=self.target_group,
                multi_value_headers=self.binding.multi_value_headers,
            )
        else:
            event = apigw_v2_event(
                req,
                route_key=self.binding.route_key,
                path_parameters=params,
                api_id=self.api_id,
                account=ACCOUNT_ID,
            )
        return orjson.dumps(event)

    def response(self, payload: bytes) -> Response:
        if self.binding.alb:
            converted = alb_response(payload, multi_value_headers=self.binding.multi_value_headers)
        else:
            converted = apigw_v2_response(payload)
        return from_event_response(converted)


class SyncFunction:
    """Lambda proxy integration: invoke and wait, within the integration timeout. With an invoker
    that `InvokesSoon` (the runtime) no coroutine and no future of the invocation's runs per
    request: its result settles the response's future."""

    def __init__(self, function: str, binding: Binding, c: Collaborators) -> None:
        self.function = function
        self.events = EventBuilder(binding, c.app)
        self.invoker = c.invoker
        self.invoke_then = c.invoker.invoke_then if isinstance(c.invoker, InvokesSoon) else None
        self.timeout = binding.timeout or c.config.integration_timeout
        self.retry_after = c.config.retry_after
        self.deadlines = Deadlines()

    def __call__(self, request: Request, params: dict[str, str]) -> asyncio.Future[Response]:
        payload = self.events.event(request, params)
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        deadline = self.deadlines.start(self.timeout, partial(self._timed_out, answer))
        invoked = partial(self._invoked, answer, deadline)
        if self.invoke_then is not None:
            self.invoke_then(self.function, payload, invoked, request_id=request.request_id)
        else:
            invocation = asyncio.ensure_future(
                self.invoker.invoke(self.function, payload, request_id=request.request_id)
            )
            cancelled = "the invocation was cancelled"
            invocation.add_done_callback(partial(pass_outcome, invoked, cancelled))
        return answer

    def _timed_out(self, answer: asyncio.Future[Response]) -> None:
        # As with API Gateway and Lambda, the invocation runs on to its end (or to the function's
        # own timeout); only its answer is abandoned, and its environment serves again after.
        if not answer.done():
            answer.set_exception(
                IntegrationTimeout(
                    f"function {self.function!r} did not answer within {self.timeout:g} s"
                )
            )

    def _invoked(
        self,
        answer: asyncio.Future[Response],
        deadline: Deadline,
        result: InvocationResult | BaseException,
    ) -> None:
        self.deadlines.finish(deadline)
        if answer.done():
            return
        if isinstance(result, BaseException):
            if isinstance(result, Throttled):
                result.retry_after = result.retry_after or self.retry_after
            answer.set_exception(result)
            return
        if not result.ok:
            details = result.error() or {}
            log.info("function %s failed: %s", self.function, details)
            answer.set_exception(
                FunctionFailed(
                    f"function {self.function!r} failed ({result.function_error}: "
                    f"{details.get('errorType', 'Error')})"
                )
            )
            return
        try:
            answer.set_result(self.events.response(result.payload))
        except ValueError as invalid:
            answer.set_exception(
                FunctionFailed(
                    f"function {self.function!r} returned an invalid response: {invalid}"
                )
            )


class AsyncFunction:
    """Event invoke: the event is stored durably, then 202 with the invocation's request id (the
    gateway's request id, as for a synchronous invoke). With a broker that `SendsSoon`, no
    coroutine runs per request."""

    def __init__(self, function: str, binding: Binding, c: Collaborators) -> None:
        self.function = function
        self.events = EventBuilder(binding, c.app)
        self.submit = c.submit_async
        self.queue = async_queue_name(function)
        self.send_soon = c.broker.send_soon if isinstance(c.broker, SendsSoon) else None
        self.accepting = Accepting(
            f"the invocation of {function!r}", binding, c.config, "requestId"
        )

    def __call__(
        self, request: Request, params: dict[str, str]
    ) -> asyncio.Future[Response] | Awaitable[Response]:
        event = self.events.event(request, params)
        request_id = request.request_id
        if self.send_soon is None:
            return self.accepting.within(self.submit(self.function, event, request_id=request_id))
        message = event_message(event.decode(), request_id)  # JSON made just now: no check
        return self.accepting.soon(self.send_soon, self.queue, message, request_id)


class Accepting:
    """The 202 of a queue or async target once the broker has stored the send, or the error that
    refused it; `IntegrationTimeout` (504) when the broker has said neither within the route's
    integration timeout, as API Gateway answers a service integration that does not answer. The
    send may still be stored after that (the client cannot tell: at-least-once)."""

    def __init__(self, what: str, binding: Binding, config: GatewayConfig, key: str) -> None:
        self.what = what
        self.timeout = binding.timeout or config.integration_timeout
        self.template = binding.accepted
        self.key = key  # the 202 body's field naming the message or invocation
        self.deadlines = Deadlines()

    def soon(
        self, send_soon: Any, queue: str, message: OutgoingMessage, value: str | None
    ) -> asyncio.Future[Response]:
        """``send_soon(queue, [message], ...)`` answered as a future, without a coroutine. The
        202 names ``value``, or the message id when ``value`` is None."""
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        deadline = self.deadlines.start(self.timeout, partial(self._expired, answer))
        send_soon(queue, [message], partial(self._settle, answer, deadline, value))
        return answer

    async def within(self, stored: Awaitable[str]) -> Response:
        """The 202 naming what ``stored`` returns, unless it takes longer than the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                value = await stored
        except TimeoutError:
            raise self._timed_out() from None
        return self.accepted(value)

    def accepted(self, value: str) -> Response:
        body = accepted_body(self.template, **{self.key: value})
        return Response(202, [(b"content-type", JSON)], body)

    def _settle(
        self,
        answer: asyncio.Future[Response],
        deadline: Deadline,
        value: str | None,
        outcome: SendOutcome,
    ) -> None:
        self.deadlines.finish(deadline)
        if isinstance(outcome, BaseException):
            settle(answer, outcome)
        else:
            settle(answer, None, self.accepted(value or outcome[0].message_id))

    def _expired(self, answer: asyncio.Future[Response]) -> None:
        settle(answer, self._timed_out())

    def _timed_out(self) -> IntegrationTimeout:
        return IntegrationTimeout(
            f"{self.what} was not stored within {self.timeout:g} s; whether it will be is unknown"
        )


class QueueTarget:
    """The request body (and chosen headers, as message attributes) becomes a message; 202 with
    the message id once it is durable."""

    def __init__(self, queue: str, binding: Binding, c: Collaborators) -> None:
        config = c.app.queues.get(queue)
        self.queue = queue
        self.broker = c.broker
        self.fifo = queue.endswith(".fifo")
        self.send_soon = c.broker.send_soon if isinstance(c.broker, SendsSoon) else None
        self.forward = tuple(h.lower() for h in binding.forward_headers)
        what = f"the message for queue {queue!r}"
        self.accepting = Accepting(what, binding, c.config, "messageId")
        self.guard = (
            BacklogGuard(
                c.broker,
                queue,
                config.max_backlog,
                c.config.backlog_check_interval,
                c.config.retry_after,
            )
            if config is not None and config.max_backlog is not None
            else None
        )

    def __call__(
        self, request: Request, params: dict[str, str]
    ) -> asyncio.Future[Response] | Awaitable[Response]:
        message = self._message(request)
        if self.send_soon is None or self.guard is not None:
            return self.accepting.within(self._send(message))
        # No task and no coroutine per request: the broker's answer writes the 202.
        return self.accepting.soon(self.send_soon, self.queue, message, None)

    async def _send(self, message: OutgoingMessage) -> str:
        if self.guard is not None:
            await self.guard.check()
        result = (await self.broker.send(self.queue, [message]))[0]
        if self.guard is not None:
            self.guard.sent()
        return result.message_id

    def _message(self, request: Request) -> OutgoingMessage:
        attributes: dict[str, dict[str, str]] = {}
        for name in self.forward:
            value = request.header(name)
            if value is not None:
                attributes[name] = {"DataType": "String", "StringValue": value}
        try:
            body = request.body.decode("utf-8")
        except UnicodeDecodeError:
            body = base64.b64encode(request.body).decode("ascii")
            attributes[BODY_ENCODING_ATTRIBUTE] = {"DataType": "String", "StringValue": "base64"}
        group = dedup = None
        if self.fifo:
            group = request.header(GROUP_ID_HEADER)
            dedup = request.header(DEDUP_ID_HEADER)
            if not group:
                raise ValidationError(
                    f"queue {self.queue!r} is FIFO: send the {GROUP_ID_HEADER} header"
                )
        return OutgoingMessage(body, attributes, None, group, dedup)


def build_target(target: Target, binding: Binding, c: Collaborators) -> Endpoint:
    endpoint = _build(target, binding, c)
    if binding.schema is None:
        return endpoint
    validator = BodyValidator(binding.schema, binding.route_key)

    def validated(request: Request, params: dict[str, str]) -> Response | Awaitable[Response]:
        validator(request.body)
        return endpoint(request, params)

    return validated


def _build(target: Target, binding: Binding, c: Collaborators) -> Endpoint:
    if isinstance(target, FixedResponse):
        return Fixed(target)
    if isinstance(target, Redirect):
        return RedirectTarget(target)
    kind, _, name = target.partition(":")
    if kind == "function":
        return SyncFunction(name, binding, c)
    if kind == "async":
        return AsyncFunction(name, binding, c)
    if kind == "queue":
        return QueueTarget(name, binding, c)
    if kind == "proxy":
        return ReverseProxy(name, binding.timeout or c.config.integration_timeout, c.config)
    raise ValidationError(f"unknown target {target!r}")
