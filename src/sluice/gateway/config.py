"""`GatewayConfig`: every limit the gateway enforces, in one object passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from sluice.errors import ValidationError

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    # Request limits (API Gateway/Lambda: 6 MB synchronous payloads).
    max_body: int = 6 * MB
    max_header_bytes: int = 16 * 1024  # request line + all header lines
    max_headers: int = 100
    max_url: int = 8 * 1024
    # Time limits, seconds.
    request_deadline: float = 30.0  # from the first byte of a request to its last
    idle_timeout: float = 60.0  # keep-alive: a connection idle this long between requests closes
    integration_timeout: float = 29.0  # API Gateway's default; a route may set its own
    write_timeout: float = 60.0  # a client that stops reading a response is cut off after this
    # Connections.
    max_connections: int = 20_000
    max_requests_per_connection: int = 10_000
    backlog: int = 4096
    # Queue targets: how long a queue's measured backlog is trusted before it is re-read.
    backlog_check_interval: float = 0.1
    retry_after: float = 1.0  # seconds advertised on 429/503
    # Reverse proxy targets.
    proxy_connect_timeout: float = 5.0
    # The header that carries the request id on every response (API Gateway HTTP APIs' name).
    request_id_header: str = "apigw-requestid"
    access_log: bool = True

    def __post_init__(self) -> None:
        for name in (
            "max_body",
            "max_header_bytes",
            "max_headers",
            "max_url",
            "max_connections",
            "max_requests_per_connection",
            "backlog",
        ):
            if getattr(self, name) < 1:
                raise ValidationError(f"gateway {name} must be positive")
        for name in (
            "request_deadline",
            "idle_timeout",
            "integration_timeout",
            "write_timeout",
            "proxy_connect_timeout",
            "retry_after",
        ):
            if getattr(self, name) <= 0:
                raise ValidationError(f"gateway {name} must be positive")
        if self.backlog_check_interval < 0:
            raise ValidationError("gateway backlog_check_interval must not be negative")
