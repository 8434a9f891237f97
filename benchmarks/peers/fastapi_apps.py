"""FastAPI peers, served by Uvicorn (see ``peers.http_servers.server_argv``)."""

from __future__ import annotations

import os

from exec_counter import DEFAULT_REDIS_URL, REDIS_URL_ENV
from fastapi import FastAPI

from peers.celery_app import CeleryConfig, make_peer


def make_hello() -> FastAPI:
    api = FastAPI()

    @api.get("/")
    async def hello() -> dict[str, str]:
        return {"message": "Hello, world!"}

    return api


def make_celery_enqueue() -> FastAPI:
    """What a FastAPI user writes to accept work: ``.delay()`` and answer 202 with the id.

    ``.delay()`` blocks on Redis, so the endpoint is a plain ``def`` that FastAPI runs in
    its threadpool, as its documentation advises for blocking calls.
    """
    peer = make_peer(CeleryConfig(redis_url=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)))
    api = FastAPI()

    @api.get("/enqueue", status_code=202)
    def enqueue() -> dict[str, str]:
        return {"id": peer.noop.delay().id}

    return api
