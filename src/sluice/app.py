"""`App`: the registry that decorators fill. Declaring things here has no side effects; binding
to backends (broker, state, runtime) happens when a platform starts the app."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sluice.broker.contract import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_VISIBILITY_TIMEOUT, QueueConfig
from sluice.errors import ValidationError

Handler = Callable[[Any, Any], Any]

MAX_TIMEOUT = 900.0
MIN_MEMORY, MAX_MEMORY = 128, 10_240


def _check_range(what: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValidationError(f"{what} must be between {low:g} and {high:g}, got {value!r}")


@dataclass(frozen=True, slots=True)
class AsyncConfig:
    """Lambda's asynchronous invocation configuration (EventInvokeConfig)."""

    retries: int = 2  # MaximumRetryAttempts 0-2
    max_event_age: float = 21_600.0  # MaximumEventAgeInSeconds 60-21600
    on_success: str | None = None  # destination: "queue:NAME" or "function:NAME"
    on_failure: str | None = None

    def __post_init__(self) -> None:
        _check_range("retries", self.retries, 0, 2)
        _check_range("max_event_age", self.max_event_age, 60, 21_600)
        for dest in (self.on_success, self.on_failure):
            if dest is not None and not dest.startswith(("queue:", "function:")):
                raise ValidationError(
                    f"destination {dest!r} must be 'queue:NAME' or 'function:NAME'"
                )


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    handler: Handler | None  # None once loaded from a bundle the current process did not import
    module: str  # importable module (or file path) that defines the App
    timeout: float = 3.0
    memory: int = 128  # MB
    environment: Mapping[str, str] = field(default_factory=dict)
    reserved_concurrency: int | None = None  # hard cap on concurrent environments
    provisioned: int = 0  # environments kept warm
    idle_timeout: float = 300.0  # a warm environment idle this long is reaped (scale to zero)
    async_config: AsyncConfig = field(default_factory=AsyncConfig)

    def __post_init__(self) -> None:
        _check_range(f"function {self.name!r}: timeout", self.timeout, 1, MAX_TIMEOUT)
        _check_range(f"function {self.name!r}: memory", self.memory, MIN_MEMORY, MAX_MEMORY)
        if self.reserved_concurrency is not None:
            _check_range(
                f"function {self.name!r}: reserved_concurrency", self.reserved_concurrency, 0, 1000
            )
        _check_range(f"function {self.name!r}: provisioned", self.provisioned, 0, 1000)

    @property
    def is_async_handler(self) -> bool:
        return self.handler is not None and inspect.iscoroutinefunction(self.handler)


@dataclass(frozen=True, slots=True)
class MappingSpec:
    """An event source mapping: a queue drained into a function (Lambda ESM for SQS)."""

    queue: str
    function: str
    batch_size: int = 10
    batching_window: float = 0.0  # MaximumBatchingWindowInSeconds
    max_concurrency: int | None = None  # ScalingConfig.MaximumConcurrency 2-1000
    filters: tuple[Mapping[str, Any], ...] = ()  # FilterCriteria patterns, OR'ed
    report_batch_item_failures: bool = False
    enabled: bool = True

    def __post_init__(self) -> None:
        where = f"mapping {self.queue!r} -> {self.function!r}"
        fifo = self.queue.endswith(".fifo")
        _check_range(f"{where}: batch_size", self.batch_size, 1, 10 if fifo else 10_000)
        _check_range(f"{where}: batching_window", self.batching_window, 0, 300)
        if self.batch_size > 10 and self.batching_window < 1 and not fifo:
            # Lambda requires a window of at least 1 s for batches over 10; we default to 1 s
            # rather than refuse, and say so in the docs.
            object.__setattr__(self, "batching_window", max(self.batching_window, 0.0))
        if self.max_concurrency is not None:
            _check_range(f"{where}: max_concurrency", self.max_concurrency, 2, 1000)
        if len(self.filters) > 10:
            raise ValidationError(f"{where}: at most 10 filter patterns, got {len(self.filters)}")

    @property
    def name(self) -> str:
        return f"{self.queue}->{self.function}"


@dataclass(frozen=True, slots=True)
class FixedResponse:
    """An ALB fixed-response action."""

    status: int = 200
    body: str = ""
    content_type: str = "text/plain"

    def __post_init__(self) -> None:
        _check_range("fixed response status", self.status, 200, 599)
        if len(self.body.encode()) > 1024:
            raise ValidationError("a fixed response body is at most 1024 bytes")


@dataclass(frozen=True, slots=True)
class Redirect:
    """An ALB redirect action. Each part may use #{protocol}, #{host}, #{port}, #{path} and
    #{query}; the defaults keep the request's own value."""

    status: int = 301
    protocol: str = "#{protocol}"
    host: str = "#{host}"
    port: str = "#{port}"
    path: str = "/#{path}"
    query: str = "#{query}"

    def __post_init__(self) -> None:
        if self.status not in (301, 302):
            raise ValidationError(f"a redirect status is 301 or 302, got {self.status}")


# 'function:NAME' (sync), 'async:NAME' (Event invoke, 202), 'queue:NAME' (durable 202),
# 'proxy:http://HOST:PORT/BASE' (reverse proxy), or an ALB fixed-response / redirect action.
Target = str | FixedResponse | Redirect
TARGET_KINDS = ("function", "async", "queue", "proxy")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """An HTTP route. ``target`` is 'function:NAME' (sync), 'async:NAME' (Event invoke, 202),
    or 'queue:NAME' (durable 202); see `Target` for the others."""

    route_key: str  # "POST /transfers/{id}", "ANY /{proxy+}", "$default"
    target: Target
    timeout: float | None = None  # integration timeout; None = the gateway's (29 s)
    forward_headers: tuple[str, ...] = ()  # queue targets: headers kept as message attributes
    # Request validation as API Gateway models do it: a JSON Schema the body must satisfy (400).
    schema: Mapping[str, Any] | None = None
    # The 202 body of queue and async targets; "{messageId}" / "{requestId}" are filled in.
    accepted: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """An ALB listener rule: all conditions must hold (each one matches any of its values).
    ``priority`` 1-50000, lowest first; None marks the default rule (no conditions)."""

    priority: int | None
    target: Target
    host: tuple[str, ...] = ()  # host-header patterns, '*' and '?' wildcards
    path: tuple[str, ...] = ()  # path-pattern patterns, '*' and '?' wildcards
    method: tuple[str, ...] = ()
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> patterns
    query: tuple[tuple[str | None, str], ...] = ()  # (key or None, value pattern)
    source_ip: tuple[str, ...] = ()  # CIDR blocks
    multi_value_headers: bool = False
    timeout: float | None = None
    forward_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        conditions = (self.host, self.path, self.method, self.headers, self.query, self.source_ip)
        if self.priority is None:
            if any(conditions):
                raise ValidationError("the default rule takes no conditions")
        else:
            _check_range("rule priority", self.priority, 1, 50_000)
            if not any(conditions):
                raise ValidationError(f"rule {self.priority}: needs at least one condition")


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """CORS for the whole API, as API Gateway HTTP APIs configure it."""

    allow_origins: tuple[str, ...] = ()  # exact origins, or "*"
    allow_methods: tuple[str, ...] = ()  # or "*"
    allow_headers: tuple[str, ...] = ()  # or "*"
    expose_headers: tuple[str, ...] = ()
    max_age: int = 0
    allow_credentials: bool = False

    def __post_init__(self) -> None:
        _check_range("cors max_age", self.max_age, 0, 86_400)
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValidationError("cors: allow_credentials cannot be used with origin '*'")


def _check_target(where: str, target: Target) -> None:
    if isinstance(target, FixedResponse | Redirect):
        return
    kind, _, rest = target.partition(":")
    if kind not in TARGET_KINDS or not rest:
        raise ValidationError(
            f"{where}: target {target!r} must be one of "
            + ", ".join(f"'{k}:...'" for k in TARGET_KINDS)
            + ", a FixedResponse or a Redirect"
        )


class App:
    """The registry of one application: functions, queues, mappings and routes."""

    def __init__(self, name: str, *, usage: str = "") -> None:
        """``usage``: how to try the app, printed when `sluice dev` starts it."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValidationError(f"app name {name!r} must be letters, digits, '-' or '_'")
        self.name = name
        self.usage = usage
        self.functions: dict[str, FunctionSpec] = {}
        self.queues: dict[str, QueueConfig] = {}
        self.mappings: list[MappingSpec] = []
        self.routes: list[RouteSpec] = []
        self.rules: list[RuleSpec] = []
        self.cors_config: CorsConfig | None = None

    # -- declarations ---------------------------------------------------------------------

    def queue(
        self,
        name: str,
        *,
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        dead_letter: str | None = None,
        max_receive_count: int | None = None,
        retention: float | None = None,
        delay: float = 0.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        content_based_deduplication: bool = False,
        max_backlog: int | None = None,
    ) -> QueueConfig:
        from sluice.broker.validation import validate_queue_config

        kwargs: dict[str, Any] = {}
        if retention is not None:
            kwargs["retention"] = retention
        config = QueueConfig(
            name=name,
            visibility_timeout=visibility_timeout,
            dead_letter=dead_letter,
            max_receive_count=max_receive_count,
            delay=delay,
            max_message_size=max_message_size,
            content_based_deduplication=content_based_deduplication,
            max_backlog=max_backlog,
            **kwargs,
        )
        validate_queue_config(config)
        if name.startswith("_"):
            raise ValidationError(
                f"queue {name!r}: names starting with '_' are reserved for Sluice"
            )
        if dead_letter and dead_letter not in self.queues:
            # A DLQ named but not declared gets the defaults, as declaring it would.
            self.queues[dead_letter] = QueueConfig(
                name=dead_letter, retention=config.retention if retention else 14 * 24 * 3600.0
            )
        self.queues[name] = config
        return config

    def function(
        self,
        fn: Handler | None = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        memory: int | None = None,
        environment: Mapping[str, str] | None = None,
        reserved_concurrency: int | None = None,
        provisioned: int | None = None,
        idle_timeout: float | None = None,
        retries: int | None = None,
        max_event_age: float | None = None,
        on_success: str | None = None,
        on_failure: str | None = None,
    ) -> Any:
        """Declare (or reconfigure) a function. Usable bare (``@app.function``) or with options."""
        options: dict[str, Any] = {
            k: v
            for k, v in {
                "timeout": timeout,
                "memory": memory,
                "environment": dict(environment) if environment is not None else None,
                "reserved_concurrency": reserved_concurrency,
                "provisioned": provisioned,
                "idle_timeout": idle_timeout,
            }.items()
            if v is not None
        }
        async_options: dict[str, Any] = {
            k: v
            for k, v in {
                "retries": retries,
                "max_event_age": max_event_age,
                "on_success": on_success,
                "on_failure": on_failure,
            }.items()
            if v is not None
        }

        def register(handler: Handler) -> Handler:
            spec = self._ensure_function(handler, name)
            if async_options:
                options["async_config"] = replace(spec.async_config, **async_options)
            self.functions[spec.name] = replace(spec, **options)
            return handler

        return register(fn) if fn is not None else register

    def route(
        self,
        route_key: str,
        *,
        to: str | None = None,
        timeout: float | None = None,
        forward_headers: tuple[str, ...] = (),
        schema: Mapping[str, Any] | None = None,
        accepted: Mapping[str, Any] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Route HTTP requests. Without ``to`` the decorated function answers synchronously;
        ``to="async"`` invokes the decorated function asynchronously and answers 202;
        ``to="QUEUE"`` stores the request durably on that queue and answers 202 - that form is
        registered at once and needs no function (if it decorates one, it leaves it alone)."""
        options: dict[str, Any] = {
            "timeout": timeout,
            "forward_headers": forward_headers,
            "schema": schema,
            "accepted": accepted,
        }
        if to is not None and to != "async":
            self.add_route(route_key, f"queue:{to}", **options)
            return lambda handler: handler

        def register(handler: Handler) -> Handler:
            spec = self._ensure_function(handler, None)
            kind = "async" if to == "async" else "function"
            self.add_route(route_key, f"{kind}:{spec.name}", **options)
            return handler

        return register

    def add_route(
        self,
        route_key: str,
        target: Target,
        *,
        timeout: float | None = None,
        forward_headers: tuple[str, ...] = (),
        schema: Mapping[str, Any] | None = None,
        accepted: Mapping[str, Any] | None = None,
    ) -> RouteSpec:
        """Route HTTP requests to any target, e.g. ``"proxy:http://10.0.0.5:8000"``."""
        _check_target(f"route {route_key!r}", target)
        if timeout is not None:
            _check_range(f"route {route_key!r}: timeout", timeout, 0.05, 30)
        spec = RouteSpec(route_key, target, timeout, tuple(forward_headers), schema, accepted)
        self.routes.append(spec)
        return spec

    def rule(
        self,
        priority: int | None,
        *,
        to: Target | None = None,
        host: str | tuple[str, ...] = (),
        path: str | tuple[str, ...] = (),
        method: str | tuple[str, ...] = (),
        headers: Mapping[str, str | tuple[str, ...]] | None = None,
        query: Mapping[str | None, str] | None = None,
        source_ip: str | tuple[str, ...] = (),
        multi_value_headers: bool = False,
        timeout: float | None = None,
        forward_headers: tuple[str, ...] = (),
    ) -> Any:
        """An ALB-style listener rule (``priority=None``: the default rule). With ``to`` it is
        registered and returned; without, it decorates the function it forwards to."""

        def one(v: str | tuple[str, ...]) -> tuple[str, ...]:
            return (v,) if isinstance(v, str) else tuple(v)

        def make(target: Target) -> RuleSpec:
            _check_target(f"rule {priority}", target)
            if any(r.priority == priority for r in self.rules):
                raise ValidationError(f"two rules have priority {priority}")
            spec = RuleSpec(
                priority=priority,
                target=target,
                host=one(host),
                path=one(path),
                method=tuple(m.upper() for m in one(method)),
                headers={k.lower(): one(v) for k, v in (headers or {}).items()},
                query=tuple((query or {}).items()),
                source_ip=one(source_ip),
                multi_value_headers=multi_value_headers,
                timeout=timeout,
                forward_headers=tuple(forward_headers),
            )
            self.rules.append(spec)
            return spec

        if to is not None:
            return make(to)

        def register(handler: Handler) -> Handler:
            make(f"function:{self._ensure_function(handler, None).name}")
            return handler

        return register

    def cors(
        self,
        *,
        allow_origins: tuple[str, ...] = (),
        allow_methods: tuple[str, ...] = (),
        allow_headers: tuple[str, ...] = (),
        expose_headers: tuple[str, ...] = (),
        max_age: int = 0,
        allow_credentials: bool = False,
    ) -> CorsConfig:
        """Answer CORS preflights and decorate responses for this API."""
        self.cors_config = CorsConfig(
            tuple(allow_origins),
            tuple(m.upper() for m in allow_methods),
            tuple(h.lower() for h in allow_headers),
            tuple(h.lower() for h in expose_headers),
            max_age,
            allow_credentials,
        )
        return self.cors_config

    def consume(
        self,
        queue: str,
        *,
        batch_size: int = 10,
        batching_window: float = 0.0,
        max_concurrency: int | None = None,
        filters: tuple[Mapping[str, Any], ...] | list[Mapping[str, Any]] = (),
        report_batch_item_failures: bool = False,
        enabled: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Drain ``queue`` into the decorated function (an event source mapping)."""

        def register(handler: Handler) -> Handler:
            spec = self._ensure_function(handler, None)
            self.mappings.append(
                MappingSpec(
                    queue=queue,
                    function=spec.name,
                    batch_size=batch_size,
                    batching_window=batching_window,
                    max_concurrency=max_concurrency,
                    filters=tuple(filters),
                    report_batch_item_failures=report_batch_item_failures,
                    enabled=enabled,
                )
            )
            return handler

        return register

    # -- lookups --------------------------------------------------------------------------

    def get_function(self, name: str) -> FunctionSpec:
        from sluice.errors import FunctionNotFound

        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(
                f"function {name!r} does not exist in app {self.name!r}"
            ) from None

    def validate(self) -> None:
        """Check cross-references (queues named by mappings, routes and destinations exist)."""
        for m in self.mappings:
            if m.queue not in self.queues:
                raise ValidationError(f"mapping for function {m.function!r}: no queue {m.queue!r}")
        for where, tgt in [(f"route {r.route_key!r}", r.target) for r in self.routes] + [
            (f"rule {r.priority}", r.target) for r in self.rules
        ]:
            if not isinstance(tgt, str):
                continue
            kind, _, target = tgt.partition(":")
            if kind == "queue" and target not in self.queues:
                raise ValidationError(f"{where}: no queue {target!r}")
            if kind in ("function", "async") and target not in self.functions:
                raise ValidationError(f"{where}: no function {target!r}")
        for f in self.functions.values():
            for dest in (f.async_config.on_success, f.async_config.on_failure):
                if dest is None:
                    continue
                kind, _, target = dest.partition(":")
                known = self.queues if kind == "queue" else self.functions
                if target not in known:
                    raise ValidationError(
                        f"function {f.name!r}: destination {dest!r} does not exist"
                    )
        for q in self.queues.values():
            if q.dead_letter and q.dead_letter not in self.queues:
                raise ValidationError(
                    f"queue {q.name!r}: dead-letter queue {q.dead_letter!r} missing"
                )

    # -- internals ------------------------------------------------------------------------

    def _ensure_function(self, handler: Handler, name: str | None) -> FunctionSpec:
        if not callable(handler):
            raise ValidationError(f"{handler!r} is not callable")
        fname = name or handler.__name__
        existing = self.functions.get(fname)
        if existing is not None:
            if existing.handler is not handler:
                raise ValidationError(f"two different handlers are both named {fname!r}")
            return existing
        spec = FunctionSpec(name=fname, handler=handler, module=handler.__module__)
        self.functions[fname] = spec
        return spec

    def __repr__(self) -> str:
        return (
            f"App({self.name!r}, functions={len(self.functions)}, queues={len(self.queues)}, "
            f"mappings={len(self.mappings)}, routes={len(self.routes)})"
        )
