"""HTTP requests as Lambda sees them (API Gateway HTTP API payload 2.0, ALB target events) and
the function's result back as an HTTP response.

`HttpRequest` / `HttpResponse` are the neutral shapes the gateway speaks. Headers are kept as
the parser delivers them, ``(name, value)`` byte pairs in arrival order with repeats and the
client's spelling of names, so each event format can apply its own rules (API Gateway joins
repeats with commas, ALB keeps the last one or all of them). Response headers are byte pairs
ready to write.

A malformed function result raises `ValueError` naming what is wrong; the gateway answers 502
as API Gateway and ALB do, and logs the reason.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import orjson

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# ALB passes these content types through as text; everything else is base64-encoded.
_ALB_TEXT_TYPES = ("application/json", "application/javascript", "application/xml")
_JSON = b"application/json"


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 us per request
class HttpRequest:
    method: str
    raw_path: str  # as received, still percent-encoded, without the query string
    raw_query: str  # as received, without the "?"; "" when there is none
    headers: Sequence[tuple[bytes, bytes]]  # as received: order, repeats and name case kept
    body: bytes = b""
    client_ip: str = ""
    host: str = ""  # the Host the client asked for (a port, if any, is ignored in events)
    protocol: str = "HTTP/1.1"
    request_id: str = ""
    time: float = field(default_factory=time.time)  # epoch seconds when the request arrived

    def header(self, name: str) -> str | None:
        """The last value of a header (case-insensitive), decoded, or None."""
        wanted = name.lower().encode("latin-1")
        found = None
        for key, value in self.headers:
            if key.lower() == wanted:
                found = value
        return None if found is None else _text(found)


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reason: str | None = None  # a custom reason phrase (ALB statusDescription); None = standard


# ---------------------------------------------------------------- API Gateway HTTP API, v2.0


def apigw_v2_event(
    request: HttpRequest,
    *,
    route_key: str,
    path_parameters: Mapping[str, str] | None,
    api_id: str,
    account: str,
    stage: str = "$default",
    stage_variables: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API payload format 2.0 event.

    Header names are lower-cased and repeats joined with commas; ``Cookie`` headers become the
    ``cookies`` list (and leave ``headers``). Query parameters are URL-decoded, repeats joined
    with commas. ``cookies``, ``queryStringParameters``, ``pathParameters``, ``stageVariables``
    and ``body`` are left out when there is nothing to put in them, as API Gateway does.
    """
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1").lower()
        value = _text(raw_value)
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        elif name in headers:
            headers[name] = f"{headers[name]},{value}"
        else:
            headers[name] = value

    domain = _domain(request.host or headers.get("host", ""))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.raw_path,
        "rawQueryString": request.raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if request.raw_query:
        params: dict[str, str] = {}
        for key, value in _query_pairs(request.raw_query, decode=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        if params:
            event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": account,
        "apiId": api_id,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": request.method,
            "path": request.raw_path,
            "protocol": request.protocol,
            "sourceIp": request.client_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request.request_id,
        "routeKey": route_key,
        "stage": stage,
        "time": clf_time(request.time),
        "timeEpoch": int(request.time * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if stage_variables:
        event["stageVariables"] = dict(stage_variables)
    if request.body:
        body, encoded = _event_body(request.body, headers.get("content-type"), _is_v2_text)
        event["body"] = body
        event["isBase64Encoded"] = encoded
    else:
        event["isBase64Encoded"] = False
    return event


def apigw_v2_response(result: Any) -> HttpResponse:
    """Turn a function's result (its raw JSON payload as bytes, or the decoded value) into the
    HTTP response, by the payload 2.0 rules.

    A JSON object with ``statusCode`` is a proxy response: ``headers``, ``multiValueHeaders``,
    ``cookies`` (each one a ``Set-Cookie``), ``body`` and ``isBase64Encoded``. Anything else (an
    object without ``statusCode``, a list, a string, a number, null) is sent as a 200
    ``application/json`` response whose body is the function's JSON payload, unchanged.
    """
    raw, value = _decode_result(result)
    if not (isinstance(value, dict) and "statusCode" in value):
        body = raw if raw is not None else orjson.dumps(value)
        return HttpResponse(200, [(b"content-type", _JSON)], body)

    status = _status(value)
    headers: list[tuple[bytes, bytes]] = []
    _add_single_headers(headers, value.get("headers"))
    _add_multi_headers(headers, value.get("multiValueHeaders"))
    cookies = value.get("cookies")
    if cookies is not None:
        if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
            raise ValueError("cookies must be a list of strings")
        headers.extend((b"set-cookie", _header_value("set-cookie", c)) for c in cookies)
    return HttpResponse(status, headers, _response_body(value))


# ------------------------------------------------------------------- Application Load Balancer


def alb_event(
    request: HttpRequest, *, target_group_arn: str, multi_value_headers: bool = False
) -> dict[str, Any]:
    """The event an ALB sends a Lambda target.

    Query parameters are passed as the client sent them: ALB does not URL-decode them. Without
    multi-value headers a repeated header or parameter keeps its last value; with them, the
    event carries ``multiValueHeaders`` / ``multiValueQueryStringParameters`` instead, with
    every value in order. The body is sent as text for ``text/*``, JSON, JavaScript and XML
    content that is not content-encoded, and base64-encoded otherwise.
    """
    event: dict[str, Any] = {
        "requestContext": {"elb": {"targetGroupArn": target_group_arn}},
        "httpMethod": request.method,
        "path": request.raw_path,
    }
    pairs = _query_pairs(request.raw_query, decode=False) if request.raw_query else []
    header_pairs = [(k.decode("latin-1").lower(), _text(v)) for k, v in request.headers]
    single = dict(header_pairs)  # the last value of each header
    if multi_value_headers:
        event["multiValueQueryStringParameters"] = _group(pairs)
        event["multiValueHeaders"] = _group(header_pairs)
    else:
        event["queryStringParameters"] = dict(pairs)
        event["headers"] = single
    content_type = single.get("content-type")
    content_encoding = single.get("content-encoding")
    if not request.body:
        event["body"] = ""
        event["isBase64Encoded"] = False
    elif content_encoding:
        event["body"] = base64.b64encode(request.body).decode("ascii")
        event["isBase64Encoded"] = True
    else:
        event["body"], event["isBase64Encoded"] = _event_body(
            request.body, content_type, _is_alb_text
        )
    return event


def alb_response(result: Any, *, multi_value_headers: bool = False) -> HttpResponse:
    """Turn a function's result into the response an ALB sends: the result must be an object
    with an integer ``statusCode``; ``statusDescription`` becomes the reason phrase. Headers are
    read from ``multiValueHeaders`` when the target group has multi-value headers on, from
    ``headers`` when it has them off (the other key is ignored, as ALB ignores it)."""
    _, value = _decode_result(result)
    if not isinstance(value, dict):
        raise ValueError(f"an ALB target must return a JSON object, not {_kind(value)}")
    if "statusCode" not in value:
        raise ValueError("the response has no statusCode")
    status = _status(value)
    description = value.get("statusDescription")
    if description is not None and (
        not isinstance(description, str) or any(c in description for c in "\r\n\0")
    ):
        raise ValueError("statusDescription must be a single-line string")
    headers: list[tuple[bytes, bytes]] = []
    if multi_value_headers:
        _add_multi_headers(headers, value.get("multiValueHeaders"))
    else:
        _add_single_headers(headers, value.get("headers"))
    reason = _reason_phrase(description, status) if description else None
    return HttpResponse(status, headers, _response_body(value), reason)


# --------------------------------------------------------------------------------- helpers


def clf_time(epoch_seconds: float) -> str:
    """``12/Mar/2020:19:03:58 +0000`` (UTC), locale-independent."""
    second = int(epoch_seconds)
    if second != _clf_cache[0]:  # formatted once per second, not once per request
        t = time.gmtime(second)
        _clf_cache[:] = (
            second,
            f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000",
        )
    return _clf_cache[1]


_clf_cache: list[Any] = [None, ""]


def _text(raw: bytes) -> str:
    # Header values are ASCII in practice; UTF-8 from modern clients, latin-1 as HTTP/1.1 says.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _domain(host: str) -> str:
    if host.startswith("["):  # [IPv6]:port
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _query_pairs(raw_query: str, *, decode: bool) -> list[tuple[str, str]]:
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if decode:
            key, value = unquote_plus(key), unquote_plus(value)
        pairs.append((key, value))
    return pairs


def _group(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_v2_text(content_type: str | None) -> bool:
    # No content type: text if the bytes are UTF-8 (checked by the caller).
    media = _media_type(content_type)
    return (
        not media
        or media.startswith("text/")
        or media in _ALB_TEXT_TYPES
        or media.endswith(("+json", "+xml"))
    )


def _is_alb_text(content_type: str | None) -> bool:
    media = _media_type(content_type)
    return media.startswith("text/") or media in _ALB_TEXT_TYPES


def _event_body(
    body: bytes, content_type: str | None, is_text: Callable[[str | None], bool]
) -> tuple[str, bool]:
    if is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _decode_result(result: Any) -> tuple[bytes | None, Any]:
    if isinstance(result, (bytes, bytearray, memoryview)):
        raw = bytes(result)
        try:
            return raw, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the function returned invalid JSON: {exc}") from None
    return None, result


def _status(value: Mapping[str, Any]) -> int:
    status = value["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool):
        raise ValueError(f"statusCode must be an integer, not {_kind(status)}")
    if not 100 <= status <= 599:
        raise ValueError(f"statusCode {status} is not an HTTP status (100-599)")
    return status


def _response_body(value: Mapping[str, Any]) -> bytes:
    body = value.get("body")
    encoded = value.get("isBase64Encoded", False)
    if encoded is not None and not isinstance(encoded, bool):
        raise ValueError(f"isBase64Encoded must be a boolean, not {_kind(encoded)}")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise ValueError(f"body must be a string, not {_kind(body)} (serialize it first)")
    if not encoded:
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("body is marked isBase64Encoded but is not valid base64") from None


def _add_single_headers(out: list[tuple[bytes, bytes]], headers: Any) -> None:
    if headers is None:
        return
    if not isinstance(headers, dict):
        raise ValueError(f"headers must be an object, not {_kind(headers)}")
    for name, value in headers.items():
        out.append((_header_name(name), _header_value(name, value)))


def _add_multi_headers(out: list[tuple[bytes, bytes]], headers: Any) -> None:
    if headers is None:
        return
    if not isinstance(headers, dict):
        raise ValueError(f"multiValueHeaders must be an object, not {_kind(headers)}")
    for name, values in headers.items():
        if not isinstance(values, list):
            raise ValueError(f"multiValueHeaders[{name!r}] must be a list")
        encoded_name = _header_name(name)
        out.extend((encoded_name, _header_value(name, v)) for v in values)


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_name(name: Any) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"header name {name!r} is not a non-empty string")
    encoded = name.encode("latin-1", errors="replace")
    if not _TOKEN.issuperset(encoded):
        raise ValueError(f"header name {name!r} has characters HTTP does not allow")
    return encoded


def _header_value(name: str, value: Any) -> bytes:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        raise ValueError(f"header {name!r} has a {_kind(value)} value; use a string")
    if "\r" in text or "\n" in text or "\0" in text:
        # A line break would let a function inject headers or split the response.
        raise ValueError(f"header {name!r} contains a line break or NUL")
    return text.encode("utf-8")


def _reason_phrase(description: str, status: int) -> str:
    # ALB's statusDescription is "<code> <phrase>", e.g. "200 OK"; the reason is the phrase.
    code, _, phrase = description.partition(" ")
    return phrase if code == str(status) and phrase else description


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
