"""The HTTP gateway: API Gateway HTTP API routes and ALB-style rules in front of functions,
queues and upstream servers, on a hardened HTTP/1.1 server."""

from __future__ import annotations

from typing import Any

from sluice.gateway.config import GatewayConfig
from sluice.gateway.gateway import ControlHook, Gateway

__all__ = ["ControlHook", "Gateway", "GatewayConfig", "create_gateway"]


def create_gateway(
    platform: Any, config: GatewayConfig | None = None, *, control: ControlHook | None = None
) -> Gateway:
    """The gateway for a started `sluice.platform.Platform` (its broker, runtime and submit)."""
    return Gateway(
        platform.app, platform.broker, platform.runtime, platform.submit, config, control=control
    )
