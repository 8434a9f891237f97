"""The app the crash test kills: a no-op consumer that records every message id it processed."""

import os

import sluice

app = sluice.App("crash")
app.queue("jobs", visibility_timeout=3, dead_letter="jobs-dlq", max_receive_count=10)


@app.consume("jobs", batch_size=100, max_concurrency=4)
def work(event, context):
    ids = "".join(r["messageId"] + "\n" for r in event["Records"])
    path = os.path.join(os.environ["CRASH_OUT"], f"{os.getpid()}.ids")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, ids.encode())  # one write per batch: in the page cache before we return
    finally:
        os.close(fd)
