"""`sluice.Client`: send messages and invoke functions from other programs.

Messages go straight to the broker the platform uses (the embedded data directory, or the Redis
URL), so a send that returned is durable whether or not a platform is running. Synchronous invokes
need a running platform and go through its Lambda-compatible Invoke API over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from sluice.broker.contract import Broker, OutgoingMessage, QueueStats
from sluice.config import Settings
from sluice.errors import SluiceError, Unavailable


def _encode(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload)


class Client:
    def __init__(
        self,
        *,
        data_dir: str | Path | None = None,
        broker_url: str | None = None,
        url: str | None = None,
    ) -> None:
        self.settings = Settings.from_env(data_dir=data_dir, broker_url=broker_url)
        self.url = url.rstrip("/") if url else None
        self._loop = asyncio.new_event_loop()
        self._broker: Broker | None = None

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def _get_broker(self) -> Broker:
        if self._broker is None:
            from sluice.platform import open_broker

            broker = open_broker(self.settings)
            self._run(broker.start())
            self._broker = broker
        return self._broker

    # -- queues ---------------------------------------------------------------------------

    def send(self, queue: str, body: str | Mapping[str, Any], **options: Any) -> str:
        """Send one message (a dict body is JSON-encoded); returns its message id."""
        return self.send_batch(queue, [body], **options)[0]

    def send_batch(
        self,
        queue: str,
        bodies: Iterable[str | Mapping[str, Any]],
        *,
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
        delay: float | None = None,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> list[str]:
        messages = [
            OutgoingMessage(
                body=b if isinstance(b, str) else orjson.dumps(b).decode(),
                attributes=dict(attributes or {}),
                delay=delay,
                group_id=group_id,
                deduplication_id=deduplication_id,
            )
            for b in bodies
        ]
        results = self._run(self._get_broker().send(queue, messages))
        return [r.message_id for r in results]

    def stats(self, queue: str) -> QueueStats:
        return self._run(self._get_broker().stats(queue))

    # -- functions ------------------------------------------------------------------------

    def invoke(self, function: str, payload: Any = None, *, asynchronous: bool = False) -> Any:
        """Invoke a function. Asynchronous: durable enqueue, returns the request id (works with
        no platform running). Synchronous: returns the decoded result; a function error raises
        `FunctionError` carrying Lambda's error object."""
        body = _encode({} if payload is None else payload)
        if asynchronous:
            from sluice.dispatch.async_invoke import submit_async

            return self._run(submit_async(self._get_broker(), function, body))
        _status, headers, data = self._http_invoke(function, body)
        result = orjson.loads(data) if data else None
        if headers.get("x-amz-function-error"):
            raise FunctionError(result)
        return result

    def _http_invoke(self, function: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        import json
        import urllib.error
        import urllib.request

        if self.url is None:
            raise Unavailable("a synchronous invoke needs a running platform: pass url=...")
        request = urllib.request.Request(
            f"{self.url}/2015-03-31/functions/{function}/invocations", data=body, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=930) as response:
                headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, headers, response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()
            try:
                message = json.loads(detail).get("message", detail.decode())
            except ValueError:
                message = detail.decode(errors="replace")
            error = SluiceError(message)
            error.status = exc.code
            raise error from None
        except urllib.error.URLError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc.reason}") from None

    def close(self) -> None:
        if self._broker is not None:
            self._run(self._broker.close())
            self._broker = None
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FunctionError(SluiceError):
    """The function ran and failed; ``error`` is Lambda's {errorMessage, errorType, stackTrace}."""

    code = "FunctionError"
    status = 200

    def __init__(self, error: Any) -> None:
        message = error.get("errorMessage", str(error)) if isinstance(error, dict) else str(error)
        super().__init__(message)
        self.error = error
