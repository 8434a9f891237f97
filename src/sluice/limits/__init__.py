"""Concurrency leases that hold across every process using the same backend."""

from sluice.limits.contract import Limiter
from sluice.limits.local import LocalLimiter

__all__ = ["Limiter", "LocalLimiter"]
