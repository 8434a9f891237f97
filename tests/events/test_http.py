"""API Gateway HTTP API (payload 2.0) and ALB events and responses, checked against the
structure of AWS's documented examples."""

from __future__ import annotations

import base64
from calendar import timegm

import orjson
import pytest

from sluice.events.http import (
    HttpRequest,
    alb_event,
    alb_response,
    apigw_v2_event,
    apigw_v2_response,
    clf_time,
)

# 12/Mar/2020:19:03:58.390 +0000
T = timegm((2020, 3, 12, 19, 3, 58, 0, 0, 0)) + 0.39
TG_ARN = (
    "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/"
    "lambda-279XGJDqGZ5rsrHC2Fjr/49e9d65c45c6791a"
)


def _request(**overrides: object) -> HttpRequest:
    fields: dict[str, object] = {
        "method": "GET",
        "raw_path": "/",
        "raw_query": "",
        "headers": [],
        "host": "id.execute-api.us-east-1.amazonaws.com",
        "client_ip": "192.0.2.1",
        "request_id": "id",
        "time": T,
    }
    fields.update(overrides)
    return HttpRequest(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------- API Gateway v2 events


def test_v2_event_matches_the_documented_example() -> None:
    request = _request(
        method="POST",
        raw_path="/my/path",
        raw_query="parameter1=value1&parameter1=value2&parameter2=value",
        headers=[
            (b"Header1", b"value1"),
            (b"Header2", b"value1"),
            (b"Cookie", b"cookie1; cookie2"),
            (b"header2", b"value2"),
            (b"User-Agent", b"agent"),
            (b"Content-Type", b"text/plain"),
        ],
        body=b"Hello from Lambda",
    )
    event = apigw_v2_event(
        request,
        route_key="$default",
        path_parameters={"parameter1": "value1"},
        api_id="api-id",
        account="123456789012",
        stage_variables={"stageVariable1": "value1", "stageVariable2": "value2"},
    )
    assert event == {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/my/path",
        "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
        "cookies": ["cookie1", "cookie2"],
        "headers": {
            "header1": "value1",
            "header2": "value1,value2",
            "user-agent": "agent",
            "content-type": "text/plain",
        },
        "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api-id",
            "domainName": "id.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "id",
            "http": {
                "method": "POST",
                "path": "/my/path",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "agent",
            },
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000",
            "timeEpoch": 1584039838390,
        },
        "body": "Hello from Lambda",
        "pathParameters": {"parameter1": "value1"},
        "isBase64Encoded": False,
        "stageVariables": {"stageVariable1": "value1", "stageVariable2": "value2"},
    }
    orjson.dumps(event)


def test_v2_event_omits_what_aws_omits() -> None:
    event = apigw_v2_event(
        _request(headers=[(b"Host", b"x")]),
        route_key="GET /",
        path_parameters={},
        api_id="a",
        account="1",
    )
    for absent in ("cookies", "queryStringParameters", "pathParameters", "stageVariables", "body"):
        assert absent not in event
    assert event["isBase64Encoded"] is False
    assert event["headers"] == {"host": "x"}
    assert event["rawQueryString"] == ""
    assert event["requestContext"]["http"]["userAgent"] == ""


def test_v2_query_parameters_are_url_decoded_and_raw_query_is_not() -> None:
    event = apigw_v2_event(
        _request(raw_query="x=foo%3Dbar&name=J%C3%BCrgen+M&flag&=v&&"),
        route_key="$default",
        path_parameters=None,
        api_id="a",
        account="1",
    )
    assert event["rawQueryString"] == "x=foo%3Dbar&name=J%C3%BCrgen+M&flag&=v&&"
    assert event["queryStringParameters"] == {
        "x": "foo=bar",
        "name": "Jürgen M",
        "flag": "",
        "": "v",
    }


def test_v2_domain_name_drops_the_port_and_falls_back_to_the_host_header() -> None:
    event = apigw_v2_event(
        _request(host="", headers=[(b"host", b"api.example.com:8443")]),
        route_key="$default",
        path_parameters=None,
        api_id="a",
        account="1",
    )
    assert event["requestContext"]["domainName"] == "api.example.com"
    assert event["requestContext"]["domainPrefix"] == "api"


@pytest.mark.parametrize(
    ("content_type", "body", "encoded"),
    [
        (b"application/json", b'{"a": "\xc3\xa9"}', False),
        (b"text/html; charset=utf-8", b"<p>hi</p>", False),
        (b"application/vnd.api+json", b"{}", False),
        (None, b"plain text", False),
        (b"application/octet-stream", b"abc", True),
        (b"image/png", b"\x89PNG\r\n", True),
        (b"application/x-www-form-urlencoded", b"a=1&b=2", True),
        (b"text/plain", b"\xff\xfe not utf-8", True),
        (None, b"\xff\xfe", True),
    ],
)
def test_v2_body_is_text_or_base64(content_type: bytes | None, body: bytes, encoded: bool) -> None:
    headers = [(b"content-type", content_type)] if content_type else []
    event = apigw_v2_event(
        _request(method="POST", headers=headers, body=body),
        route_key="$default",
        path_parameters=None,
        api_id="a",
        account="1",
    )
    assert event["isBase64Encoded"] is encoded
    if encoded:
        assert base64.b64decode(event["body"]) == body
    else:
        assert event["body"] == body.decode()


def test_clf_time_is_locale_independent_and_utc() -> None:
    assert clf_time(0) == "01/Jan/1970:00:00:00 +0000"
    assert clf_time(T) == "12/Mar/2020:19:03:58 +0000"
    assert clf_time(timegm((2021, 12, 31, 23, 59, 59, 0, 0, 0))) == "31/Dec/2021:23:59:59 +0000"


def test_request_header_lookup_is_case_insensitive_and_takes_the_last() -> None:
    request = _request(headers=[(b"X-A", b"1"), (b"x-a", b"2")])
    assert request.header("x-A") == "2"
    assert request.header("missing") is None


# ---------------------------------------------------------------- API Gateway v2 responses


def test_v2_proxy_response() -> None:
    response = apigw_v2_response(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "text/plain", "X-Count": 3},
            "multiValueHeaders": {"X-Multi": ["a", "b"]},
            "cookies": ["a=1; Secure", "b=2"],
            "body": "Hello from Lambda!",
            "isBase64Encoded": False,
        }
    )
    assert response.status == 201
    assert response.headers == [
        (b"Content-Type", b"text/plain"),
        (b"X-Count", b"3"),
        (b"X-Multi", b"a"),
        (b"X-Multi", b"b"),
        (b"set-cookie", b"a=1; Secure"),
        (b"set-cookie", b"b=2"),
    ]
    assert response.body == b"Hello from Lambda!"


def test_v2_proxy_response_from_raw_payload_bytes_with_base64_body() -> None:
    payload = orjson.dumps(
        {"statusCode": 200, "body": base64.b64encode(b"\x00\x01").decode(), "isBase64Encoded": True}
    )
    response = apigw_v2_response(payload)
    assert (response.status, response.headers, response.body) == (200, [], b"\x00\x01")


def test_v2_proxy_response_without_body_is_empty() -> None:
    response = apigw_v2_response({"statusCode": 204})
    assert (response.status, response.body) == (204, b"")


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (b'{"message": "Hello from Lambda!"}', b'{"message": "Hello from Lambda!"}'),
        (b'"Hello from Lambda!"', b'"Hello from Lambda!"'),
        (b"[1, 2]", b"[1, 2]"),
        (b"null", b"null"),
        (b"42", b"42"),
    ],
)
def test_v2_anything_without_status_code_is_a_200_json_response(
    payload: bytes, body: bytes
) -> None:
    response = apigw_v2_response(payload)
    assert response.status == 200
    assert response.headers == [(b"content-type", b"application/json")]
    assert response.body == body  # the function's JSON payload, unchanged


def test_v2_decoded_value_without_status_code_is_serialized() -> None:
    response = apigw_v2_response({"message": "hi"})
    assert orjson.loads(response.body) == {"message": "hi"}


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"statusCode": "200"}, "statusCode must be an integer"),
        ({"statusCode": True}, "statusCode must be an integer"),
        ({"statusCode": 99}, "not an HTTP status"),
        ({"statusCode": 200, "body": {"a": 1}}, "body must be a string"),
        ({"statusCode": 200, "body": "!!", "isBase64Encoded": True}, "not valid base64"),
        ({"statusCode": 200, "isBase64Encoded": "yes"}, "isBase64Encoded must be a boolean"),
        ({"statusCode": 200, "headers": ["a"]}, "headers must be an object"),
        ({"statusCode": 200, "headers": {"a": {"b": 1}}}, "use a string"),
        ({"statusCode": 200, "headers": {"X": "a\r\nSet-Cookie: evil"}}, "line break"),
        ({"statusCode": 200, "headers": {"Bad Name": "v"}}, "not allow"),
        ({"statusCode": 200, "multiValueHeaders": {"X": "a"}}, "must be a list"),
        ({"statusCode": 200, "cookies": "a=1"}, "cookies must be a list"),
        (b"{not json", "invalid JSON"),
    ],
)
def test_v2_malformed_proxy_responses_raise(result: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        apigw_v2_response(result)


# ---------------------------------------------------------------------------- ALB events


def _alb_request(**overrides: object) -> HttpRequest:
    fields: dict[str, object] = {
        "raw_path": "/lambda",
        "raw_query": "query=1234ABCD",
        "headers": [
            (b"Accept", b"text/html"),
            (b"Accept-Encoding", b"gzip"),
            (b"Host", b"lambda-alb-123578498.us-east-2.elb.amazonaws.com"),
            (b"X-Forwarded-For", b"72.12.164.125"),
        ],
    }
    fields.update(overrides)
    return _request(**fields)


def test_alb_event_matches_the_documented_example() -> None:
    event = alb_event(_alb_request(), target_group_arn=TG_ARN)
    assert event == {
        "requestContext": {"elb": {"targetGroupArn": TG_ARN}},
        "httpMethod": "GET",
        "path": "/lambda",
        "queryStringParameters": {"query": "1234ABCD"},
        "headers": {
            "accept": "text/html",
            "accept-encoding": "gzip",
            "host": "lambda-alb-123578498.us-east-2.elb.amazonaws.com",
            "x-forwarded-for": "72.12.164.125",
        },
        "body": "",
        "isBase64Encoded": False,
    }
    assert list(event) == [
        "requestContext",
        "httpMethod",
        "path",
        "queryStringParameters",
        "headers",
        "body",
        "isBase64Encoded",
    ]


def test_alb_query_is_not_url_decoded_and_repeats_keep_the_last_value() -> None:
    event = alb_event(
        _alb_request(
            raw_query="x=foo%3Dbar&myKey=val1&myKey=val2&a+b=c+d",
            headers=[(b"Cookie", b"name1=value1"), (b"cookie", b"name2=value2")],
        ),
        target_group_arn=TG_ARN,
    )
    assert event["queryStringParameters"] == {"x": "foo%3Dbar", "myKey": "val2", "a+b": "c+d"}
    assert event["headers"] == {"cookie": "name2=value2"}


def test_alb_multi_value_event() -> None:
    event = alb_event(
        _alb_request(
            raw_query="myKey=val1&myKey=val2&x=%20",
            headers=[(b"Cookie", b"name1=value1"), (b"cookie", b"name2=value2")],
        ),
        target_group_arn=TG_ARN,
        multi_value_headers=True,
    )
    assert "headers" not in event and "queryStringParameters" not in event
    assert event["multiValueQueryStringParameters"] == {"myKey": ["val1", "val2"], "x": ["%20"]}
    assert event["multiValueHeaders"] == {"cookie": ["name1=value1", "name2=value2"]}


def test_alb_empty_query_is_an_empty_object() -> None:
    assert (
        alb_event(_alb_request(raw_query=""), target_group_arn=TG_ARN)["queryStringParameters"]
        == {}
    )
    event = alb_event(_alb_request(raw_query=""), target_group_arn=TG_ARN, multi_value_headers=True)
    assert event["multiValueQueryStringParameters"] == {}


@pytest.mark.parametrize(
    ("headers", "body", "encoded"),
    [
        ([(b"content-type", b"text/plain")], b"request_body", False),
        ([(b"content-type", b"application/json")], b'{"a": 1}', False),
        ([(b"content-type", b"application/xml; charset=utf-8")], b"<a/>", False),
        ([(b"content-type", b"application/javascript")], b"f()", False),
        ([(b"content-type", b"application/octet-stream")], b"abc", True),
        ([(b"content-type", b"application/x-www-form-urlencoded")], b"a=1", True),
        ([], b"no content type", True),
        ([(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], b"{}", True),
        ([(b"content-type", b"text/plain")], b"\xff", True),
    ],
)
def test_alb_body_encoding(headers: list[tuple[bytes, bytes]], body: bytes, encoded: bool) -> None:
    for multi in (False, True):
        event = alb_event(
            _alb_request(method="POST", headers=headers, body=body),
            target_group_arn=TG_ARN,
            multi_value_headers=multi,
        )
        assert event["isBase64Encoded"] is encoded
        assert (base64.b64decode(event["body"]) if encoded else event["body"].encode()) == body


# ------------------------------------------------------------------------- ALB responses


def test_alb_response_matches_the_documented_example() -> None:
    response = alb_response(
        {
            "statusCode": 200,
            "statusDescription": "200 OK",
            "isBase64Encoded": False,
            "headers": {"Content-Type": "text/html"},
            "body": "<h1>Hello from Lambda!</h1>",
        }
    )
    assert response.status == 200
    assert response.reason == "OK"
    assert response.headers == [(b"Content-Type", b"text/html")]
    assert response.body == b"<h1>Hello from Lambda!</h1>"


def test_alb_multi_value_response_reads_multi_value_headers_only() -> None:
    result = {
        "statusCode": 418,
        "statusDescription": "I'm a teapot",
        "headers": {"Ignored": "x"},
        "multiValueHeaders": {
            "Set-cookie": ["a=1;Domain=myweb.com;Secure;HttpOnly", "b=2;Expires=May 8, 2019"],
            "Content-Type": ["application/json"],
        },
        "body": base64.b64encode(b"\x00").decode(),
        "isBase64Encoded": True,
    }
    response = alb_response(orjson.dumps(result), multi_value_headers=True)
    assert response.status == 418
    assert response.reason == "I'm a teapot"
    assert response.headers == [
        (b"Set-cookie", b"a=1;Domain=myweb.com;Secure;HttpOnly"),
        (b"Set-cookie", b"b=2;Expires=May 8, 2019"),
        (b"Content-Type", b"application/json"),
    ]
    assert response.body == b"\x00"
    single = alb_response(result, multi_value_headers=False)
    assert single.headers == [(b"Ignored", b"x")]


def test_alb_response_without_description_uses_the_standard_reason() -> None:
    assert alb_response({"statusCode": 500}).reason is None


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"body": "x"}, "no statusCode"),
        ("Hello", "must return a JSON object"),
        (b"[1]", "must return a JSON object"),
        ({"statusCode": "200"}, "statusCode must be an integer"),
        ({"statusCode": 200, "statusDescription": "200 OK\r\nX: y"}, "single-line"),
        ({"statusCode": 200, "body": 5}, "body must be a string"),
        (b"", "invalid JSON"),
    ],
)
def test_alb_malformed_responses_raise(result: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        alb_response(result)
