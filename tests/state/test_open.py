"""Choosing a state backend by URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.errors import ValidationError
from sluice.state import StateStore, open_state
from sluice.state.postgres import PostgresState
from sluice.state.sqlite import SQLiteState


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/state.db", Path("data/state.db")),
        ("sqlite:////var/lib/sluice/state.db", Path("/var/lib/sluice/state.db")),
        ("/var/lib/sluice/state.db", Path("/var/lib/sluice/state.db")),
        ("state.db", Path("state.db")),
    ],
)
def test_sqlite_urls_and_paths(url: str, path: Path) -> None:
    store = open_state(url)
    assert isinstance(store, SQLiteState)
    assert isinstance(store, StateStore)
    assert store.path == path


def test_postgres_urls() -> None:
    store = open_state("postgresql://u@db:5432/app?sslmode=require")
    assert isinstance(store, PostgresState)
    assert isinstance(store, StateStore)
    assert (store.url, store.schema) == ("postgresql://u@db:5432/app?sslmode=require", "sluice")
    custom = open_state("postgres://u@db/app?schema=tenant_a&connect_timeout=3")
    assert isinstance(custom, PostgresState)
    assert (custom.url, custom.schema) == ("postgres://u@db/app?connect_timeout=3", "tenant_a")


@pytest.mark.parametrize(
    "url", ["", "sqlite://", "sqlite:///", "redis://localhost", "postgresql://db/app?schema=a-b"]
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        open_state(url)
