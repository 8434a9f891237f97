"""Argument checks and value encoding shared by the state backends, so both reject alike."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from sluice.errors import ValidationError

MAX_NAME_LENGTH = 1024
# Counters are signed 64-bit on every backend.
COUNTER_MIN = -(2**63)
COUNTER_MAX = 2**63 - 1
_DIGEST = re.compile(r"[0-9a-f]{64}")
_LAST_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def check_name(what: str, name: object) -> str:
    """Kinds, keys and counter names: non-empty text without NUL (PostgreSQL text refuses it)."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{what} must be a non-empty string, got {name!r}")
    return check_bound(what, name)


def check_bound(what: str, text: object) -> str:
    """Text compared with keys (list prefixes, `after`): may be empty, else as for keys."""
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be a string, got {text!r}")
    if len(text) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in text:
        raise ValidationError(f"{what} must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid Unicode (lone surrogate)") from None
    return text


def check_expect_version(expect_version: int | None, *, allow_zero: bool = True) -> None:
    if expect_version is None:
        return
    if isinstance(expect_version, bool) or not isinstance(expect_version, int):
        raise ValidationError(f"expect_version must be an integer, got {expect_version!r}")
    if expect_version < 0 or (expect_version == 0 and not allow_zero):
        lowest = 0 if allow_zero else 1
        raise ValidationError(f"expect_version must be at least {lowest}, got {expect_version}")


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValidationError(f"limit must be a non-negative integer or None, got {limit!r}")


def check_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValidationError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


def check_increment(by: object) -> int:
    if isinstance(by, bool) or not isinstance(by, int):
        raise ValidationError(f"incr step must be an integer, got {by!r}")
    if not COUNTER_MIN <= by <= COUNTER_MAX:
        raise ValidationError(f"incr step {by} is outside the signed 64-bit range")
    return by


def counter_overflow(counter: str, by: int) -> ValidationError:
    return ValidationError(f"counter {counter!r} would leave the signed 64-bit range (+{by})")


def blob_digest(data: object) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError(f"blob data must be bytes, got {type(data).__name__}")
    return hashlib.sha256(data).hexdigest()


def encode_value(value: object) -> str:
    """JSON text of a record value; refuses what would not read back as the same dict."""
    if not isinstance(value, dict):
        raise ValidationError(f"a record value must be a dict, got {type(value).__name__}")
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise ValidationError(f"record value is not JSON-encodable: {exc}") from None


def decode_value(text: str | bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(text)
    return value


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (code point order).

    Lets both backends answer a prefix query as an index range ``prefix <= key < bound``
    without LIKE escaping. None means there is no upper bound (the prefix is empty, or made only
    of the last code point).
    """
    stripped = prefix.rstrip(chr(_LAST_CODE_POINT))
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if following in _SURROGATES:  # surrogates cannot be stored; skip to the next valid one
        following = _SURROGATES.stop
    return stripped[:-1] + chr(following)


def list_filter(
    kind: str, prefix: str, limit: int | None, after: str | None, placeholder: str
) -> tuple[str, list[Any]]:
    """The WHERE clause (without ORDER/LIMIT) and parameters of `StateStore.list`, checked, for
    a backend whose parameter placeholder is ``placeholder``."""
    check_name("kind", kind)
    check_bound("prefix", prefix)
    check_limit(limit)
    conditions, params = ["kind = ", "key >= "], [kind, prefix]
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        conditions.append("key < ")
        params.append(upper)
    if after is not None:
        check_bound("after", after)
        conditions.append("key > ")
        params.append(after)
    return " AND ".join(c + placeholder for c in conditions), params
