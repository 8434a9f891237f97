"""Reaching the real servers tests need: skip locally when one is absent, fail when CI=true."""

from __future__ import annotations

import os
import socket

import pytest

REDIS_URL = os.environ.get("SLUICE_TEST_REDIS", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("SLUICE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it; a race with others is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: servers the tests need must be running)")
    pytest.skip(f"{message}; start it to run these tests")


def require_redis() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def require_postgres() -> str:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL
