"""Functions the dispatcher tests drive. Each records what it saw in files under $ESM_OUT, so a
test can check behaviour from the handlers' own point of view (across processes)."""

import os
import time

import orjson

import sluice

app = sluice.App("esmtest")
app.queue("work", visibility_timeout=1, dead_letter="work-dlq", max_receive_count=3)
app.queue("limited", visibility_timeout=30)
app.queue("filtered", visibility_timeout=30)
app.queue("failures", visibility_timeout=30)


def _record(name: str, line: str) -> None:
    fd = os.open(os.path.join(os.environ["ESM_OUT"], name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@app.consume("work", batch_size=10, report_batch_item_failures=True)
def partial(event, context):
    """Fails every record whose body says so; the others succeed."""
    failures = []
    for r in event["Records"]:
        body = orjson.loads(r["body"])
        _record("partial", f"{body['id']} {r['attributes']['ApproximateReceiveCount']}")
        if body.get("fail"):
            failures.append({"itemIdentifier": r["messageId"]})
    return {"batchItemFailures": failures}


@app.consume("limited", batch_size=1, max_concurrency=3)
def slow(event, context):
    """Records its start and end time, so overlap can be measured afterwards."""
    start = time.time()
    time.sleep(0.15)
    _record("slow", f"{start} {time.time()} {os.getpid()}")


@app.consume("filtered", batch_size=10, filters=[{"body": {"kind": ["keep"]}}])
def picky(event, context):
    for r in event["Records"]:
        _record("picky", orjson.loads(r["body"])["id"])


@app.function(timeout=5, on_failure="queue:failures", on_success="queue:failures")
def flaky(event, context):
    _record("flaky", f"{context.aws_request_id} {event.get('ok', False)}")
    if not event.get("ok"):
        raise RuntimeError("flaky says no")
    return {"done": event["n"]}


@app.function(reserved_concurrency=1, timeout=5)
def single(event, context):
    """One at a time: a second caller is throttled while this runs."""
    _record("single", f"{event['who']} start {time.time()}")
    time.sleep(0.6)
    _record("single", f"{event['who']} end {time.time()}")
