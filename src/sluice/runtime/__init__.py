"""Execution environments: one process per concurrent invocation of one function."""

from sluice.runtime.contract import InvocationResult, Invoker

__all__ = ["InvocationResult", "Invoker"]
