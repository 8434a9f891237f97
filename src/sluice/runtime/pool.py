"""`Runtime`: the supervisor. Keeps warm environments per function, forks new ones from the
template when none is idle, enforces timeouts, memory and reserved concurrency, and turns what
happened into an `InvocationResult` with Lambda's log lines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from sluice.app import FunctionSpec
from sluice.errors import FunctionNotFound, InvalidPayload, Throttled, Unavailable
from sluice.futures import pass_outcome
from sluice.limits.contract import Limiter
from sluice.limits.local import LocalLimiter
from sluice.runtime import channel, faults, reports
from sluice.runtime.context import RequestIds, new_log_stream_name
from sluice.runtime.contract import InvocationResult
from sluice.runtime.environment import EnvironmentConfig
from sluice.runtime.handle import EnvironmentHandle, EnvironmentLost
from sluice.runtime.logfiles import LogFiles
from sluice.runtime.zygote import TemplateLost, TemplateProcess

log = logging.getLogger("sluice.runtime")

LEASE_GRACE = 10.0  # a reserved-concurrency lease outlives the function timeout by this much
EXIT_NOTICE_WAIT = 2.0  # how long to wait for the template to report how an environment ended
MB = 1 << 20


class _HandlerMissing(Exception):
    pass


class _FunctionPool:
    __slots__ = ("cold_starts", "envs", "idle", "spec")

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.envs: set[EnvironmentHandle] = set()
        self.idle: list[EnvironmentHandle] = []  # a stack: the most recently used is reused first
        self.cold_starts = 0

    def take_idle(self) -> EnvironmentHandle | None:
        while self.idle:
            env = self.idle.pop()
            if env.alive:
                return env
            self.discard(env)
        return None

    def discard(self, env: EnvironmentHandle) -> None:
        self.envs.discard(env)
        with contextlib.suppress(ValueError):
            self.idle.remove(env)
        env.close()


class Runtime:
    """Runs the functions of one app in execution environments (implements `Invoker`)."""

    def __init__(
        self,
        app_ref: str,
        functions: Mapping[str, FunctionSpec],
        *,
        limiter: Limiter | None = None,
        log_dir: Path | None = None,
        max_environments: int = 1000,  # Lambda's default account concurrency
        poll_interval: float = 0.025,  # how often running environments' memory is checked
    ) -> None:
        self._app_ref = app_ref
        self._specs = dict(functions)
        self._limiter: Limiter = limiter if limiter is not None else LocalLimiter()
        self._logs = LogFiles(log_dir) if log_dir is not None else None
        self._request_ids = RequestIds()
        self._max_environments = max_environments
        self._poll_interval = poll_interval
        self._pools = {name: _FunctionPool(spec) for name, spec in self._specs.items()}
        self._by_pid: dict[int, EnvironmentHandle] = {}
        self._busy: set[EnvironmentHandle] = set()
        self._template: TemplateProcess | None = None
        self._template_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._watching = False  # the monitor runs (it stops when nothing is busy)
        self._settling: set[asyncio.Task[InvocationResult]] = set()  # invoke_then's tasks
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the template (importing the app once) and the provisioned environments."""
        await self._ensure_template()
        self._started = True
        await self._top_up_provisioned()
        self._reaper = asyncio.create_task(self._reap_loop(), name="sluice-runtime-reaper")

    async def close(self) -> None:
        """Kill every environment (and whatever they spawned) and the template."""
        self._closed = True
        for task in (self._reaper, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for pool in self._pools.values():
            for env in list(pool.envs):
                pool.discard(env)
        if self._template is not None:
            await self._template.close()
            self._template = None
        if self._logs is not None:
            self._logs.close()

    def stop_idle(self, function: str | None = None) -> int:
        """Stop the idle environments (of one function, or all) that are not provisioned, so
        the next invocations start cold. Returns how many were stopped."""
        stopped = 0
        for name, pool in self._pools.items():
            if function is not None and name != function:
                continue
            for env in [e for e in pool.idle if not e.provisioned]:
                pool.discard(env)
                stopped += 1
        return stopped

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "warm": len(pool.envs),
                "idle": len(pool.idle),
                "busy": sum(1 for env in pool.envs if env.busy),
                "cold_starts": pool.cold_starts,
                "provisioned": pool.spec.provisioned,
                "reserved_concurrency": pool.spec.reserved_concurrency,
            }
            for name, pool in self._pools.items()
        }

    # -- invoking -------------------------------------------------------------------------

    async def invoke(
        self,
        function: str,
        payload: bytes,
        *,
        request_id: str | None = None,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> InvocationResult:
        pool = self._pools.get(function)
        if pool is None:
            raise FunctionNotFound(f"function {function!r} does not exist")
        if not self._started or self._closed:
            raise Unavailable("the runtime is not running")
        request_id = request_id or self._request_ids.next()
        # Encoded before an environment is taken: a bad id or context harms no environment.
        id_bytes = request_id.encode()
        if len(id_bytes) > channel.MAX_ID:
            raise ValueError(f"a request id is at most {channel.MAX_ID} bytes")
        extra = b""
        if client_context or identity:
            extra = channel.encode_extra(client_context, identity)
        reserved = pool.spec.reserved_concurrency
        if reserved is None:  # the common case: no lease to take
            return await self._run(pool, request_id, id_bytes, extra, payload)
        key = f"reserved:{function}"
        lease = await self._limiter.acquire(key, reserved, pool.spec.timeout + LEASE_GRACE)
        if lease is None:
            raise Throttled(
                f"Rate Exceeded: function {function!r} is at its reserved concurrency ({reserved})"
            )
        try:
            return await self._run(pool, request_id, id_bytes, extra, payload)
        finally:
            await self._limiter.release(key, lease)

    async def _run(
        self, pool: _FunctionPool, request_id: str, id_bytes: bytes, extra: bytes, payload: bytes
    ) -> InvocationResult:
        """Run one request (its id, and extra from `channel.encode_extra`) on an environment."""
        env = pool.take_idle()
        if env is None:
            try:
                env = await self._spawn(pool, provisioned=False)
            except _HandlerMissing:
                return self._handler_missing(pool.spec, request_id)
        started = self._busy_with(pool, env)
        try:
            answer = await env.send(channel.encode_request(id_bytes, env.deadline, extra, payload))
        except EnvironmentLost:
            return await self._stopped(pool, env, request_id, started)
        except BaseException:  # cancelled mid-invocation: the handler's state is unknown
            pool.discard(env)
            raise
        finally:
            self._not_busy(env)
        return self._answered(pool, env, request_id, answer)

    def invoke_then(
        self,
        function: str,
        payload: bytes,
        done: Callable[[InvocationResult | BaseException], None],
        *,
        request_id: str | None = None,
    ) -> None:
        """`invoke`, its result (or the exception it raises) passed to ``done`` on the event
        loop (see `contract.InvokesSoon`). On a warm environment of a function without reserved
        concurrency, no coroutine and no future: the environment's answer calls ``done``.
        Otherwise `invoke` runs as a task."""
        pool = self._pools.get(function)
        id_bytes = request_id.encode() if request_id is not None else b""
        env = None
        if (
            pool is not None
            and pool.spec.reserved_concurrency is None
            and self._started
            and not self._closed
            and len(id_bytes) <= channel.MAX_ID
        ):
            env = pool.take_idle()
        if pool is None or env is None:
            task = asyncio.get_running_loop().create_task(
                self.invoke(function, payload, request_id=request_id)
            )
            self._settling.add(task)  # kept until done, as the one `_answer_arrived` starts
            task.add_done_callback(partial(self._settled, done))
            return
        if request_id is None:
            request_id = self._request_ids.next()
            id_bytes = request_id.encode()
        started = self._busy_with(pool, env)
        arrived = partial(self._answer_arrived, pool, env, request_id, started, done)
        try:
            env.send_then(channel.encode_request(id_bytes, env.deadline, b"", payload), arrived)
        except EnvironmentLost as lost:
            arrived(lost)

    def _answer_arrived(
        self,
        pool: _FunctionPool,
        env: EnvironmentHandle,
        request_id: str,
        started: float,
        done: Callable[[InvocationResult | BaseException], None],
        answer: channel.Answer | EnvironmentLost,
    ) -> None:
        """An environment answered (or ended) an `invoke_then`: release it, tell ``done``."""
        self._not_busy(env)
        if isinstance(answer, EnvironmentLost):
            stopped = asyncio.get_running_loop().create_task(
                self._stopped(pool, env, request_id, started)
            )
            self._settling.add(stopped)
            stopped.add_done_callback(partial(self._settled, done))
            return
        try:
            answered: InvocationResult | BaseException = self._answered(
                pool, env, request_id, answer
            )
        except Exception as refused:
            answered = refused
        done(answered)

    def _settled(
        self,
        done: Callable[[InvocationResult | BaseException], None],
        task: asyncio.Task[InvocationResult],
    ) -> None:
        self._settling.discard(task)
        pass_outcome(done, "the invocation was cancelled", task)

    def _busy_with(self, pool: _FunctionPool, env: EnvironmentHandle) -> float:
        """Mark ``env`` busy with one invocation from now (watched for its deadline and memory);
        the start time."""
        started = time.monotonic()
        env.deadline = started + pool.spec.timeout
        env.busy = True
        self._busy.add(env)
        if not self._watching:
            self._watching = True
            self._monitor = asyncio.create_task(self._watch(), name="sluice-runtime-monitor")
        return started

    def _not_busy(self, env: EnvironmentHandle) -> None:
        env.busy = False
        env.deadline = math.inf
        self._busy.discard(env)

    def _answered(
        self, pool: _FunctionPool, env: EnvironmentHandle, request_id: str, answer: channel.Answer
    ) -> InvocationResult:
        status, duration, init_ms, log_size, rss_kb, body = answer
        if status == channel.INVALID:
            self._release(pool, env)
            raise InvalidPayload(body.decode())
        spec = pool.spec
        cold, env.cold = env.cold, False
        if cold:
            pool.cold_starts += 1
        else:
            init_ms = None
        used = math.ceil(rss_kb / 1024)
        billed = reports.billed_ms(duration, init_ms)
        # The output must be read now (the environment reuses the memfd); the text is only
        # formatted if someone reads `logs` or a log file is kept.
        output = env.read_output(log_size) if log_size else b""
        logs = reports.InvocationLog(
            request_id, output, duration, billed, spec.memory, used, init_ms
        )
        self._release(pool, env)
        if self._logs is not None:
            self._logs.add(spec.name, logs)
        return InvocationResult(
            request_id,
            body,
            "Unhandled" if status == channel.ERROR else None,
            logs,
            duration,
            billed,
            used,
            init_ms,
            cold,
        )

    async def _stopped(
        self, pool: _FunctionPool, env: EnvironmentHandle, request_id: str, started: float
    ) -> InvocationResult:
        """The environment ended mid-invocation: killed by us (timeout, memory) or on its own."""
        spec = pool.spec
        try:
            status = await asyncio.wait_for(asyncio.shield(env.exit_status), EXIT_NOTICE_WAIT)
        except TimeoutError:
            status = None
        duration = (time.monotonic() - started) * 1000.0
        output = env.read_output().decode("utf-8", "replace")
        used = math.ceil(env.peak_rss / MB)
        if env.kill_reason == "timeout":
            error = faults.timeout_error(request_id, spec.timeout)
            duration = spec.timeout * 1000.0
            output += reports.timed_out_line(request_id, spec.timeout)
        else:
            if env.kill_reason == "oom":
                error = faults.out_of_memory_error(request_id)
                used = max(used, spec.memory)
            else:
                error = faults.exit_error(request_id, status)
            output += reports.runtime_error_lines(error["errorMessage"], error["errorType"])
        cold, env.cold = env.cold, False
        if cold:
            pool.cold_starts += 1
        pool.discard(env)
        billed = reports.billed_ms(duration, None)
        logs = reports.InvocationLog(request_id, output, duration, billed, spec.memory, used, None)
        if self._logs is not None:
            self._logs.add(spec.name, logs)
        return InvocationResult(
            request_id=request_id,
            payload=orjson.dumps(error),
            function_error="Unhandled",
            logs=logs,
            duration_ms=duration,
            billed_duration_ms=billed,
            max_memory_mb=used,
            cold=cold,
        )

    def _handler_missing(self, spec: FunctionSpec, request_id: str) -> InvocationResult:
        error = {
            "errorMessage": f"Handler for function {spec.name!r} missing on module {spec.module!r}",
            "errorType": "Runtime.HandlerNotFound",
            "requestId": request_id,
            "stackTrace": [],
        }
        logs = reports.start_line(request_id) + faults.log_line(error)
        logs += reports.end_line(request_id)
        if self._logs is not None:
            self._logs.add(spec.name, logs)
        return InvocationResult(request_id, orjson.dumps(error), "Unhandled", logs)

    def _release(self, pool: _FunctionPool, env: EnvironmentHandle) -> None:
        if env.kill_reason is not None or not env.alive or self._closed:
            pool.discard(env)
            return
        env.idle_since = time.monotonic()
        pool.idle.append(env)

    # -- environments ---------------------------------------------------------------------

    async def _ensure_template(self) -> TemplateProcess:
        async with self._template_lock:
            if self._template is None or not self._template.running:
                if self._template is not None:
                    await self._template.close()
                template = TemplateProcess(self._app_ref, self._on_exit, self._on_template_lost)
                await template.start()
                self._template = template
            return self._template

    async def _spawn(self, pool: _FunctionPool, *, provisioned: bool) -> EnvironmentHandle:
        if sum(len(p.envs) for p in self._pools.values()) >= self._max_environments:
            raise Throttled(f"Rate Exceeded: {self._max_environments} environments are running")
        template = await self._ensure_template()
        spec = pool.spec
        config = EnvironmentConfig(
            function=spec.name,
            memory=spec.memory,
            timeout=spec.timeout,
            environment=spec.environment,
            log_stream=new_log_stream_name(),
            requested_at=time.monotonic(),
            provisioned=provisioned,
        )
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        memfd = os.memfd_create(f"sluice-{spec.name}", os.MFD_CLOEXEC)
        env = EnvironmentHandle(config, memfd)
        pool.envs.add(env)
        try:
            try:
                await env.connect(requests_w, answers_r)
                pid = await template.fork(config, [requests_r, answers_w, memfd])
            finally:
                os.close(requests_r)
                os.close(answers_w)
            if pid is None:
                raise _HandlerMissing(spec.name)
            self._by_pid[pid] = env
            env.forked(pid)
        except TemplateLost as exc:
            pool.discard(env)
            raise Unavailable("the runtime template process stopped; retry") from exc
        except BaseException:
            pool.discard(env)
            raise
        return env

    def _on_exit(self, pid: int, status: int) -> None:
        env = self._by_pid.pop(pid, None)
        if env is None:
            return
        env.exited(status)
        if not env.busy:  # a busy one is handled (and discarded) by its invocation
            pool = self._pools.get(env.function)
            if pool is not None:
                pool.discard(env)

    def _on_template_lost(self) -> None:
        # Its environments die with it (parent-death signal); no exit notices will come.
        for env in self._by_pid.values():
            env.exited(None)
        self._by_pid.clear()

    async def _top_up_provisioned(self) -> None:
        for pool in self._pools.values():
            have = sum(1 for env in pool.envs if env.provisioned)
            for _ in range(pool.spec.provisioned - have):
                env = await self._spawn(pool, provisioned=True)
                env.idle_since = time.monotonic()
                pool.idle.insert(0, env)

    # -- background -----------------------------------------------------------------------

    async def _watch(self) -> None:
        """While anything runs, check deadlines and memory every poll interval."""
        try:
            while self._busy:
                await asyncio.sleep(self._poll_interval)
                now = time.monotonic()
                for env in list(self._busy):
                    env.check(now)
        finally:
            self._watching = False

    async def _reap_loop(self) -> None:
        idle_timeouts = [p.spec.idle_timeout for p in self._pools.values()] or [60.0]
        interval = min(5.0, max(0.05, min(idle_timeouts) / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for pool in self._pools.values():
                for env in list(pool.idle):
                    expired = now - env.idle_since >= pool.spec.idle_timeout
                    if not env.alive or (expired and not env.provisioned):
                        pool.discard(env)
            try:
                await self._top_up_provisioned()
            except Exception:
                log.exception("could not restart provisioned environments")
