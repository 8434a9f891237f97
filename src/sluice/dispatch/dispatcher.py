"""The dispatcher: one `Poller` per event source mapping and one per function's async queue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sluice.app import App, FunctionSpec, MappingSpec
from sluice.broker.contract import Broker
from sluice.config import Settings
from sluice.dispatch.async_invoke import EventInvokeHandler, async_queue_name
from sluice.dispatch.poller import Poller, PollerConfig
from sluice.dispatch.sqs import SqsMappingHandler
from sluice.events.sqs import queue_arn
from sluice.limits.contract import Limiter
from sluice.runtime.contract import Invoker


def function_arn(settings: Settings, function: str) -> str:
    return f"arn:aws:lambda:{settings.region}:{settings.account}:function:{function}"


class Dispatcher:
    def __init__(
        self,
        app: App,
        broker: Broker,
        invoker: Invoker,
        limiter: Limiter,
        settings: Settings,
        submit: Callable[[str, bytes], Awaitable[str]],
    ) -> None:
        self.app = app
        self._broker = broker
        self._invoker = invoker
        self._limiter = limiter
        self._settings = settings
        self._submit = submit
        self.pollers: list[Poller] = []
        self._mapping_pollers: dict[str, Poller] = {}

    def _mapping_poller(self, spec: MappingSpec) -> Poller:
        self.app.get_function(spec.function)  # an unknown function fails here, at start
        config = PollerConfig(
            name=f"{self.app.name}:{spec.name}",
            queue=spec.queue,
            batch_size=spec.batch_size,
            batching_window=spec.batching_window,
            max_concurrency=spec.max_concurrency or self._settings.default_mapping_concurrency,
            lease_key=f"{self.app.name}:mapping:{spec.name}",
        )
        handler = SqsMappingHandler(
            spec,
            self._broker,
            self._invoker,
            queue_arn=queue_arn(spec.queue, self._settings.region, self._settings.account),
            region=self._settings.region,
        )
        return Poller(config, self._broker, self._limiter, handler)

    def _async_poller(self, fn: FunctionSpec) -> Poller:
        concurrency = fn.reserved_concurrency or self._settings.default_mapping_concurrency
        config = PollerConfig(
            name=f"{self.app.name}:async:{fn.name}",
            queue=async_queue_name(fn.name),
            batch_size=1,
            batching_window=0.0,
            max_concurrency=max(1, concurrency),
            lease_key=f"{self.app.name}:async:{fn.name}",
        )
        handler = EventInvokeHandler(
            fn,
            self._broker,
            self._invoker,
            function_arn=function_arn(self._settings, fn.name),
            retry_delays=self._settings.async_retry_delays,
            submit=self._submit,
        )
        return Poller(config, self._broker, self._limiter, handler)

    def start(self) -> None:
        for spec in self.app.mappings:
            poller = self._mapping_poller(spec)
            self._mapping_pollers[spec.name] = poller
            self.pollers.append(poller)
            if spec.enabled:
                poller.start()
        for fn in self.app.functions.values():
            if fn.reserved_concurrency != 0:
                poller = self._async_poller(fn)
                self.pollers.append(poller)
                poller.start()

    async def set_enabled(self, mapping: str, enabled: bool) -> None:
        """Enable or disable a mapping (``QUEUE->FUNCTION``) while running, as Lambda's
        UpdateEventSourceMapping does: a disabled mapping finishes the batches it has in flight
        and leaves its queue alone; the messages wait. The declared state returns on restart."""
        from sluice.errors import NotFound

        poller = self._mapping_pollers.get(mapping)
        if poller is None:
            raise NotFound(f"no event source mapping {mapping!r}")
        if enabled and not poller.running:
            poller.start()
        elif not enabled and poller.running:
            await poller.stop()

    async def stop(self, grace: float = 30.0) -> None:
        import asyncio

        await asyncio.gather(*(p.stop(grace) for p in self.pollers))
        self.pollers = []

    def status(self) -> list[dict[str, object]]:
        return [p.status() for p in self.pollers]
