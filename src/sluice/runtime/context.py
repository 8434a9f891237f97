"""The Lambda context object handed to handlers, and the environment variables Lambda sets."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

ACCOUNT_ID = "000000000000"
DEFAULT_REGION = "local"
VERSION = "$LATEST"


def region() -> str:
    return os.environ.get("SLUICE_REGION") or DEFAULT_REGION


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{region()}:{ACCOUNT_ID}:function:{name}"


def new_log_stream_name() -> str:
    """Like Lambda's: ``2024/05/01/[$LATEST]`` and 32 hex digits, one per environment."""
    return f"{datetime.now(UTC):%Y/%m/%d}/[{VERSION}]{uuid.uuid4().hex}"


def lambda_environment(
    name: str, memory: int, handler: str, log_stream: str, own: Mapping[str, str]
) -> dict[str, str]:
    """The variables Lambda sets in an execution environment; the function's own win."""
    reg = region()
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
        "AWS_LAMBDA_FUNCTION_VERSION": VERSION,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
        "AWS_REGION": reg,
        "AWS_DEFAULT_REGION": reg,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python_sluice",
        "_HANDLER": handler,
    }
    env.update(own)
    return env


class CognitoIdentity:
    """Fields not given read as None from the class: the usual invocation has no identity, and
    an instance with nothing to store is a fraction of the cost of one with both fields set."""

    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None

    def __init__(self, identity: Mapping[str, Any] | None = None) -> None:
        if identity:
            self.cognito_identity_id = identity.get("cognito_identity_id")
            self.cognito_identity_pool_id = identity.get("cognito_identity_pool_id")


class Client:
    __slots__ = (
        "app_package_name",
        "app_title",
        "app_version_code",
        "app_version_name",
        "installation_id",
    )

    def __init__(self, client: Mapping[str, Any]) -> None:
        self.installation_id: str | None = client.get("installation_id")
        self.app_title: str | None = client.get("app_title")
        self.app_version_name: str | None = client.get("app_version_name")
        self.app_version_code: str | None = client.get("app_version_code")
        self.app_package_name: str | None = client.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, context: Mapping[str, Any]) -> None:
        client = context.get("client")
        self.client: Client | None = Client(client) if client else None
        self.custom: dict[str, Any] | None = context.get("custom")
        self.env: dict[str, Any] | None = context.get("env")


class LambdaContext:
    """What ``context`` is inside a handler. One per invocation; cheap to build."""

    __slots__ = (
        "_deadline",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
    )

    def __init__(
        self,
        *,
        function_name: str,
        memory_limit_in_mb: str,
        log_stream_name: str,
        aws_request_id: str,
        deadline: float,
        invoked_function_arn: str | None = None,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = VERSION
        self.invoked_function_arn = invoked_function_arn or function_arn(function_name)
        self.memory_limit_in_mb = memory_limit_in_mb  # a str, as in the AWS runtime
        self.aws_request_id = aws_request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity = CognitoIdentity(identity)
        self.client_context = ClientContext(client_context) if client_context else None
        self._deadline = deadline  # time.monotonic() value: the clock is shared across processes

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return (
            f"LambdaContext(function_name={self.function_name!r}, "
            f"aws_request_id={self.aws_request_id!r})"
        )


_new_object = object.__new__  # an instance without calling __init__


class ContextFactory:
    """Makes each invocation's `LambdaContext` in one environment. The fields that are the same
    for every invocation there are computed once; only the request's own are set per call."""

    __slots__ = ("_arn", "_function", "_log_group", "_log_stream", "_memory")

    def __init__(
        self,
        *,
        function_name: str,
        memory_limit_in_mb: str,
        log_stream_name: str,
        invoked_function_arn: str,
    ) -> None:
        self._function = function_name
        self._memory = memory_limit_in_mb
        self._log_stream = log_stream_name
        self._arn = invoked_function_arn
        self._log_group = f"/aws/lambda/{function_name}"

    def new(
        self,
        request_id: str,
        deadline: float,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> LambdaContext:
        context = LambdaContext.__new__(LambdaContext)
        context.function_name = self._function
        context.function_version = VERSION
        context.invoked_function_arn = self._arn
        context.memory_limit_in_mb = self._memory
        context.aws_request_id = request_id
        context.log_group_name = self._log_group
        context.log_stream_name = self._log_stream
        context.identity = CognitoIdentity(identity) if identity else _new_object(CognitoIdentity)
        context.client_context = ClientContext(client_context) if client_context else None
        context._deadline = deadline
        return context


class RequestIds:
    """UUID-shaped request ids: a random prefix per runtime and a counter, as unique within it
    as uuid4 and a tenth of the cost. Made 256 at a time: the counter counts blocks of 256 ids,
    whose last two hex digits are the 256 pairs (one concatenation an id, no formatting)."""

    __slots__ = ("_blocks", "_prefix", "_ready")

    _LOW = [f"{i:02x}" for i in range(256)]

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{(int(r[16], 16) & 3 | 8):x}{r[17:20]}-"
        self._blocks = itertools.count(int.from_bytes(os.urandom(4)))
        self._ready: list[str] = []

    def next(self) -> str:
        ready = self._ready
        if not ready:
            head = f"{self._prefix}{next(self._blocks) & 0xFFFFFFFFFF:010x}"
            ready += [head + low for low in reversed(self._LOW)]  # pop() takes them in order
        return ready.pop()
