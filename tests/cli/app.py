import sluice

app = sluice.App("clitest")
app.queue("jobs", visibility_timeout=1, dead_letter="jobs-dlq", max_receive_count=1)


@app.function
def echo(event, context):
    return {"echo": event, "function": context.function_name}


@app.function
def boom(event, context):
    raise ValueError("no good")


app.queue("held")


@app.consume("held")
def drain(event, context):
    return None
