"""A closed-loop HTTP/1.1 load generator for spikes of many concurrent connections.

wrk cannot send a fixed number of requests with a unique body each, nor report a per-second
timeline by status, so the spike benchmark uses this: P processes, each holding C/P keep-alive
connections, each connection sending requests back to back until the shared budget is spent.
Every response is counted by status; failures are counted by kind (refused, reset, timeout).

    python benchmarks/loadgen.py --url http://127.0.0.1:8080/transfers --connections 10000 \
        --requests 200000 --body '{"n": {n}}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # second (since start) -> {"2xx": n, "4xx": n, "5xx": n, "error": n}
    timeline: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies_ms: list[float] = field(default_factory=list)
    duration: float = 0.0
    # the request numbers ({n}) answered 2xx, when run_load(record_accepted=True)
    accepted: list[int] = field(default_factory=list)
    started_at: float = 0.0  # wall-clock time the spike began (timeline second 0)

    def merge(self, other: dict[str, Any]) -> None:
        self.sent += other["sent"]
        self.statuses.update({int(k): v for k, v in other["statuses"].items()})
        self.errors.update(other["errors"])
        for sec, counts in other["timeline"].items():
            self.timeline[int(sec)].update(counts)
        self.latencies_ms.extend(other["latencies_ms"])
        self.accepted.extend(other["accepted"])
        self.duration = max(self.duration, other["duration"])
        self.started_at = other["started_at"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "timeline": {k: dict(v) for k, v in sorted(self.timeline.items())},
            "latencies_ms": self.latencies_ms,
            "duration": self.duration,
            "accepted": self.accepted,
            "started_at": self.started_at,
        }

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


async def _connection(
    host: str,
    port: int,
    make_request: Any,
    budget: list[int],
    res: LoadResult,
    t0: float,
    timeout: float,
    sample_every: int,
    record_accepted: bool = False,
) -> None:
    reader = writer = None
    while budget[0] > 0:
        n = budget[0]
        budget[0] -= 1
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout
                )
            writer.write(make_request(n))
            status, keep_alive = await asyncio.wait_for(_read_response(reader), timeout)
            res.statuses[status] += 1
            if record_accepted and 200 <= status < 300:
                res.accepted.append(n)
            res.timeline[int(time.perf_counter() - t0)][_status_class(status)] += 1
            if n % sample_every == 0:
                res.latencies_ms.append((time.perf_counter() - started) * 1000)
            if not keep_alive:
                writer.close()
                writer = None
        except Exception as exc:  # every failure is counted by kind, none is fatal
            kind = _error_kind(exc)
            res.errors[kind] += 1
            res.timeline[int(time.perf_counter() - t0)]["error"] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
        finally:
            res.sent += 1
    if writer is not None:
        writer.close()


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"
    if isinstance(exc, OSError):
        return f"oserror-{exc.errno}"
    return type(exc).__name__


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    if length:
        await reader.readexactly(length)
    return status, keep_alive


def _worker(args: dict[str, Any], out: Any) -> None:
    import uvloop

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = urlsplit(args["url"])
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"
    method, template = args["method"], args["body"]
    offset = args["offset"]

    def make_request(n: int) -> bytes:
        body = template.replace("{n}", str(offset + n)).encode() if template else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def run() -> LoadResult:
        res = LoadResult()
        budget = [args["requests"]]
        t0 = args["t0"]
        while time.time() < t0:  # all processes start the spike together
            await asyncio.sleep(0.001)
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                _connection(
                    host,
                    port,
                    make_request,
                    budget,
                    res,
                    t0,
                    args["timeout"],
                    args["sample_every"],
                    args["record_accepted"],
                )
                for _ in range(args["connections"])
            )
        )
        res.duration = time.perf_counter() - t0
        res.accepted = [offset + n for n in res.accepted]  # the numbers the bodies carried
        res.started_at = args["t0"]
        return res

    out.send(uvloop.run(run()).to_dict())


def run_load(
    url: str,
    *,
    connections: int,
    requests: int,
    body: str = "",
    method: str = "POST",
    processes: int = 2,
    timeout: float = 60.0,
    sample_every: int = 10,
    record_accepted: bool = False,
) -> LoadResult:
    ctx = mp.get_context("spawn")
    start_at = time.time() + 1.0 + 0.2 * processes
    pipes, procs = [], []
    for i in range(processes):
        parent, child = ctx.Pipe(duplex=False)
        args = {
            "url": url,
            "method": method,
            "body": body,
            "timeout": timeout,
            "connections": connections // processes + (1 if i < connections % processes else 0),
            "requests": requests // processes + (1 if i < requests % processes else 0),
            "offset": i * (requests // processes + 1),
            "t0": start_at,
            "sample_every": sample_every,
            "record_accepted": record_accepted,
        }
        p = ctx.Process(target=_worker, args=(args, child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    total = LoadResult()
    for pipe in pipes:
        total.merge(pipe.recv())
    for p in procs:
        p.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", default="", help="request body; {n} is replaced by the number")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    a = parser.parse_args()
    res = run_load(
        a.url,
        connections=a.connections,
        requests=a.requests,
        body=a.body,
        method=a.method,
        processes=a.processes,
        timeout=a.timeout,
    )
    summary = {
        k: v for k, v in res.to_dict().items() if k not in ("latencies_ms", "timeline", "accepted")
    }
    summary["rps"] = round(res.sent / res.duration) if res.duration else 0
    summary["p50_ms"], summary["p99_ms"] = res.percentile(50), res.percentile(99)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
