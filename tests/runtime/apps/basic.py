"""Handlers that behave: sync, async, context, environment, logging, errors."""

import asyncio
import logging
import os
import sys

import sluice

app = sluice.App("runtime-basic")


@app.function(environment={"GREETING": "hello"}, memory=256)
def echo(event, context):
    print("echo got", event)
    return {"event": event, "pid": os.getpid()}


@app.function
async def async_echo(event, context):
    await asyncio.sleep(0.01)
    return {"event": event, "loop": id(asyncio.get_running_loop()), "pid": os.getpid()}


@app.function(timeout=7)
def context_info(event, context):
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "identity_id": context.identity.cognito_identity_id,
        "client_custom": context.client_context.custom if context.client_context else None,
    }


@app.function(environment={"GREETING": "hello"}, memory=256)
def environ(event, context):
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "_HANDLER", "GREETING"))}


@app.function
def chatty(event, context):
    print("to stdout", event["n"])
    print("to stderr", event["n"], file=sys.stderr)
    logging.getLogger("chatty").warning("a warning %s", event["n"])
    os.system(f"echo from a subprocess {event['n']}")
    return event["n"]


@app.function
def fail(event, context):
    raise ValueError(f"bad input: {event}")


@app.function
def unserialisable(event, context):
    return {1, 2, 3}
