"""Settings: one object, read once from arguments and the environment, passed explicitly."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sluice.errors import ValidationError

ACCOUNT_ID = "000000000000"
CONFIG_FILE = "sluice.toml"
# Keys of a config file (the same settings as the SLUICE_* variables) and the fields they set.
FILE_KEYS = {
    "data_dir": "data_dir",
    "broker": "broker_url",
    "state": "state_url",
    "region": "region",
    "host": "host",
    "port": "port",
    "max_environments": "max_environments",
    "control_token": "control_token",
}


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings fields from a TOML file; a relative ``data_dir`` is relative to the file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"cannot read config file {str(path)!r}: {exc}") from None
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        known = ", ".join(FILE_KEYS)
        raise ValidationError(f"{path}: unknown settings {unknown} (known: {known})")
    for key, value in data.items():
        wanted = int if key in ("port", "max_environments") else str
        if not isinstance(value, wanted) or isinstance(value, bool):
            kind = "an integer" if wanted is int else "a string"
            raise ValidationError(f"{path}: {key} must be {kind}, got {value!r}")
    values = {FILE_KEYS[k]: v for k, v in data.items()}
    if "data_dir" in values:
        values["data_dir"] = path.parent / str(values["data_dir"])
    return values


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".sluice")
    # Backends by URL. None = embedded SQLite files in data_dir.
    broker_url: str | None = None
    state_url: str | None = None
    region: str = "local"
    account: str = ACCOUNT_ID
    host: str = "127.0.0.1"
    port: int = 8080
    # Async (Event) invocations: Lambda waits about 1 and then 2 minutes between retries.
    async_retry_delays: tuple[float, ...] = (60.0, 120.0)
    # Default concurrency of a mapping that sets no max_concurrency (Lambda starts at 5 batches).
    default_mapping_concurrency: int = 5
    # Concurrent execution environments on this host, all functions together (Lambda's account
    # concurrency, 1,000 by default there).
    max_environments: int = 1000
    # The control API (Invoke API, status): open to loopback clients when `control_loopback`
    # (sluice dev), and to clients presenting this bearer token.
    control_loopback: bool = False
    control_token: str | None = None
    log_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def broker_path(self) -> Path:
        return self.data_dir / "broker.db"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def logs(self) -> Path:
        return self.log_dir or self.data_dir / "logs"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, file_values: Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
        """Overrides (flags) beat the environment, which beats ``file_values`` (a config file)."""
        env = os.environ
        values: dict[str, Any] = dict(file_values or {})
        if "SLUICE_DATA_DIR" in env:
            values["data_dir"] = Path(env["SLUICE_DATA_DIR"])
        if "SLUICE_BROKER" in env:
            values["broker_url"] = env["SLUICE_BROKER"]
        if "SLUICE_STATE" in env:
            values["state_url"] = env["SLUICE_STATE"]
        if "SLUICE_MAX_ENVIRONMENTS" in env:
            values["max_environments"] = int(env["SLUICE_MAX_ENVIRONMENTS"])
        if "SLUICE_CONTROL_TOKEN" in env:
            values["control_token"] = env["SLUICE_CONTROL_TOKEN"]
        if "SLUICE_REGION" in env:
            values["region"] = env["SLUICE_REGION"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)
