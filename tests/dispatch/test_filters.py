"""The event filter language: every operator against AWS's documented examples, the edge cases
(types, missing keys, arrays), validation of bad patterns, and Lambda's SQS body rules."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.dispatch.filters import compile_filters, sqs_record_matches
from sluice.errors import ValidationError


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    return compile_filters([pattern]).matches(event)


# ------------------------------------------------------- the documented comparison operators


@pytest.mark.parametrize(
    ("pattern", "hit", "miss"),
    [
        # Null
        ({"UserID": [None]}, {"UserID": None}, {"UserID": "null"}),
        # Empty
        ({"LastName": [""]}, {"LastName": ""}, {"LastName": " "}),
        # Equals
        ({"Name": ["Alice"]}, {"Name": "Alice"}, {"Name": "alice"}),
        # Equals (ignore case)
        ({"Name": [{"equals-ignore-case": "alice"}]}, {"Name": "ALICE"}, {"Name": "Alicia"}),
        # And
        (
            {"Location": ["New York"], "Day": ["Monday"]},
            {"Location": "New York", "Day": "Monday"},
            {"Location": "New York", "Day": "Tuesday"},
        ),
        # Or
        ({"PaymentType": ["Credit", "Debit"]}, {"PaymentType": "Debit"}, {"PaymentType": "Cash"}),
        # Or (multiple fields)
        (
            {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]},
            {"Location": "Paris", "Day": "Monday"},
            {"Location": "Paris", "Day": "Sunday"},
        ),
        # Not
        (
            {"Weather": [{"anything-but": ["Raining"]}]},
            {"Weather": "Sunny"},
            {"Weather": "Raining"},
        ),
        # Numeric (equals)
        ({"Price": [{"numeric": ["=", 100]}]}, {"Price": 100}, {"Price": 101}),
        # Numeric (range)
        ({"Price": [{"numeric": [">", 10, "<=", 20]}]}, {"Price": 20}, {"Price": 10}),
        # Exists
        ({"ProductName": [{"exists": True}]}, {"ProductName": "x"}, {"Other": "x"}),
        # Does not exist
        ({"ProductName": [{"exists": False}]}, {"Other": "x"}, {"ProductName": "x"}),
        # Begins with
        ({"Region": [{"prefix": "us-"}]}, {"Region": "us-east-1"}, {"Region": "eu-west-1"}),
        # Ends with
        ({"FileName": [{"suffix": ".png"}]}, {"FileName": "a.png"}, {"FileName": "a.png.jpg"}),
        # Booleans
        ({"ok": [True]}, {"ok": True}, {"ok": False}),
    ],
)
def test_documented_operators(
    pattern: dict[str, Any], hit: dict[str, Any], miss: dict[str, Any]
) -> None:
    assert matches(pattern, hit)
    assert not matches(pattern, miss)


def test_prefix_and_suffix_ignoring_case() -> None:
    assert matches({"f": [{"prefix": {"equals-ignore-case": "EXA"}}]}, {"f": "example.txt"})
    assert matches({"f": [{"suffix": {"equals-ignore-case": ".PNG"}}]}, {"f": "photo.png"})
    assert not matches({"f": [{"suffix": {"equals-ignore-case": ".png"}}]}, {"f": "photo.gif"})


def test_anything_but_forms() -> None:
    assert matches({"s": [{"anything-but": "initializing"}]}, {"s": "running"})
    assert not matches({"s": [{"anything-but": "initializing"}]}, {"s": "initializing"})
    assert matches({"n": [{"anything-but": [100, 200]}]}, {"n": 300})
    assert not matches({"n": [{"anything-but": [100, 200]}]}, {"n": 200.0})
    assert matches({"s": [{"anything-but": {"prefix": "init"}}]}, {"s": "stopped"})
    assert not matches({"s": [{"anything-but": {"prefix": "init"}}]}, {"s": "initializing"})
    assert matches({"f": [{"anything-but": {"suffix": ".txt"}}]}, {"f": "a.png"})
    assert not matches({"f": [{"anything-but": {"suffix": ".txt"}}]}, {"f": "a.txt"})
    ignore = {"s": [{"anything-but": {"equals-ignore-case": ["Stopped", "Overloaded"]}}]}
    assert not matches(ignore, {"s": "STOPPED"})
    assert matches(ignore, {"s": "running"})


def test_anything_but_needs_the_key_and_accepts_other_types() -> None:
    pattern = {"s": [{"anything-but": "a"}]}
    assert not matches(pattern, {})
    assert not matches(pattern, {"s": []})
    assert matches(pattern, {"s": 5})
    assert matches(pattern, {"s": None})
    # An array matches when any element is not excluded.
    assert matches(pattern, {"s": ["a", "b"]})
    assert not matches(pattern, {"s": ["a", "a"]})


def test_cidr() -> None:
    pattern = {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}
    assert matches(pattern, {"sourceIPAddress": "10.0.0.255"})
    assert not matches(pattern, {"sourceIPAddress": "10.0.1.1"})
    assert not matches(pattern, {"sourceIPAddress": "not an ip"})
    assert not matches(pattern, {"sourceIPAddress": 167772160})
    assert matches({"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db8::1"})
    assert not matches({"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "10.0.0.1"})


# --------------------------------------------------------------------------- number rules


def test_numbers_and_strings_never_match_each_other() -> None:
    assert not matches({"n": [5]}, {"n": "5"})
    assert not matches({"n": ["5"]}, {"n": 5})
    assert not matches({"n": [{"numeric": [">", 0]}]}, {"n": "7"})
    assert not matches({"n": [{"prefix": "5"}]}, {"n": 55})


def test_numbers_compare_by_value_and_booleans_are_not_numbers() -> None:
    assert matches({"n": [5]}, {"n": 5.0})
    assert matches({"n": [0.5]}, {"n": 0.5})
    assert not matches({"n": [1]}, {"n": True})
    assert not matches({"b": [True]}, {"b": 1})
    assert not matches({"n": [{"numeric": [">=", 0]}]}, {"n": False})
    huge = 10**400  # beyond any float: compared exactly, never an OverflowError
    assert not matches({"n": [1]}, {"n": huge})
    assert matches({"n": [{"numeric": [">", 1e300]}]}, {"n": huge})
    assert matches({"n": [{"anything-but": [1]}]}, {"n": huge})


@pytest.mark.parametrize(
    ("numeric", "inside", "outside"),
    [
        ([">", 0], [0.0001, 10**12], [0, -1]),
        ([">=", 0], [0, 3], [-0.5]),
        (["<", 0], [-1], [0, 1]),
        (["<=", 0], [0, -3], [0.1]),
        (["=", 3.5], [3.5], [3.4, 3.6]),
        ([">", 0, "<=", 5], [1, 5], [0, 5.01]),
        ([">=", 0, "<", 5], [0, 4.99], [5, -0.01]),
    ],
)
def test_numeric_ranges(numeric: list[Any], inside: list[float], outside: list[float]) -> None:
    pattern = {"c-count": [{"numeric": numeric}]}
    for value in inside:
        assert matches(pattern, {"c-count": value}), value
    for value in outside:
        assert not matches(pattern, {"c-count": value}), value


# ------------------------------------------------------------------- structure and arrays


def test_nested_objects_recurse() -> None:
    pattern = {"detail": {"state": ["running"], "instance": {"type": [{"prefix": "t3."}]}}}
    event = {"detail": {"state": "running", "instance": {"type": "t3.micro"}}}
    assert matches(pattern, event)
    assert not matches(pattern, {"detail": {"state": "running", "instance": {"type": "m5"}}})
    assert not matches(pattern, {"detail": {"state": "running"}})
    assert not matches(pattern, {"detail": "running"})


def test_an_event_array_matches_when_any_element_does() -> None:
    pattern = {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"]}
    event = {
        "resources": [
            "arn:aws:ec2:us-east-1:123456789012:instance/i-0",
            "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
        ]
    }
    assert matches(pattern, event)
    assert not matches(pattern, {"resources": ["arn:other"]})
    assert matches({"n": [3]}, {"n": [[1, 2], [3]]})  # nested arrays are flattened


def test_fields_of_one_pattern_object_match_within_one_array_element() -> None:
    pattern = {"items": {"sku": ["A"], "qty": [{"numeric": [">", 5]}]}}
    assert matches(pattern, {"items": [{"sku": "B", "qty": 10}, {"sku": "A", "qty": 6}]})
    # sku A and qty > 5 exist, but in different elements.
    assert not matches(pattern, {"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 10}]})


def test_exists_is_about_leaf_values() -> None:
    assert not matches({"a": [{"exists": True}]}, {"a": {"b": 1}})
    assert matches({"a": [{"exists": False}]}, {"a": {"b": 1}})
    assert not matches({"a": [{"exists": True}]}, {"a": []})
    assert matches({"a": [{"exists": False}]}, {"a": []})
    assert matches({"a": [{"exists": True}]}, {"a": None})
    assert matches({"a": [{"exists": True}]}, {"a": [1]})


def test_exists_false_under_a_missing_parent_matches() -> None:
    pattern = {"detail": {"error": [{"exists": False}]}}
    assert matches(pattern, {})
    assert matches(pattern, {"detail": {"ok": 1}})
    assert not matches(pattern, {"detail": {"error": "boom"}})


def test_conditions_in_one_list_are_ored_including_exists() -> None:
    pattern = {"v": ["a", {"prefix": "zz"}, {"exists": False}]}
    assert matches(pattern, {"v": "a"})
    assert matches(pattern, {"v": "zzz"})
    assert matches(pattern, {})
    assert not matches(pattern, {"v": "b"})


def test_or_combines_with_the_other_fields() -> None:
    pattern = {
        "source": ["aws.ec2"],
        "$or": [{"detail": {"state": ["stopped"]}}, {"detail": {"cost": [{"numeric": [">", 9]}]}}],
    }
    assert matches(pattern, {"source": "aws.ec2", "detail": {"state": "stopped"}})
    assert matches(pattern, {"source": "aws.ec2", "detail": {"cost": 10}})
    assert not matches(pattern, {"source": "aws.s3", "detail": {"cost": 10}})
    assert not matches(pattern, {"source": "aws.ec2", "detail": {"cost": 1}})


def test_several_patterns_are_ored() -> None:
    f = compile_filters([{"a": [1]}, '{"b": [2]}'])
    assert f.matches({"a": 1})
    assert f.matches({"b": 2})
    assert not f.matches({"a": 2, "b": 1})


def test_no_patterns_match_everything() -> None:
    assert compile_filters([]).matches({"anything": 1})


def test_keys_absent_from_the_pattern_are_ignored() -> None:
    assert matches({"a": ["x"]}, {"a": "x", "b": {"c": [1, 2]}, "d": None})


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({}, "empty object"),
        ({"a": {}}, "a is an empty object"),
        ({"a": "x"}, 'a: match values must be in a list, e.g. \\["x"\\]'),
        ({"a": 5}, "must be in a list"),
        ({"a": []}, "empty list"),
        ({"a": [[1]]}, "is not a match value"),
        ({"a": [{"prefix": "x", "suffix": "y"}]}, "exactly one key"),
        ({"a": [{"regex": "x.*"}]}, "unknown operator 'regex'"),
        ({"a": [{"prefix": 5}]}, "prefix takes a string"),
        ({"a": [{"suffix": {"other": "x"}}]}, "suffix takes a string"),
        ({"a": [{"equals-ignore-case": 5}]}, "equals-ignore-case takes a string"),
        ({"a": [{"exists": "yes"}]}, "exists takes true or false"),
        ({"a": [{"anything-but": []}]}, "at least one value"),
        ({"a": [{"anything-but": ["x", 1]}]}, "not mixed"),
        ({"a": [{"anything-but": [None]}]}, "strings or numbers"),
        ({"a": [{"anything-but": {"numeric": [">", 1]}}]}, "cannot be used inside anything-but"),
        ({"a": [{"anything-but": {"prefix": ""}}]}, "non-empty string"),
        ({"a": [{"numeric": [">"]}]}, "takes \\[op, number\\]"),
        ({"a": [{"numeric": ["!=", 1]}]}, "'!=' is not one of"),
        ({"a": [{"numeric": [">", "1"]}]}, "needs a number"),
        ({"a": [{"numeric": ["<", 5, ">", 1]}]}, "lower bound"),
        ({"a": [{"numeric": [">", 5, "<", 1]}]}, "is not below"),
        ({"a": [{"numeric": ["=", 1, "<", 5]}]}, "lower bound"),
        ({"a": [{"cidr": "10.0.0.0/33"}]}, "not an IP network"),
        ({"a": [{"cidr": 10}]}, "cidr takes a CIDR string"),
        ({"$or": [{"a": [1]}]}, "at least two patterns"),
        ({"$or": [{"a": [1]}, "b"]}, "must be a pattern object"),
        ({"a": [float("nan")]}, "finite"),
    ],
)
def test_bad_patterns_are_refused_naming_the_problem(pattern: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        compile_filters([{"ok": [1]}, pattern])


def test_errors_name_the_filter_and_the_path() -> None:
    with pytest.raises(ValidationError, match=r"filter 1: body\.detail\.n: numeric"):
        compile_filters([{"a": [1]}, {"body": {"detail": {"n": [{"numeric": ["<>", 1]}]}}}])


# ------------------------------------------------------------------------------ SQS bodies


def _record(body: str, **extra: Any) -> dict[str, Any]:
    return {
        "messageId": "m1",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1"},
        **extra,
    }


def test_sqs_json_body_is_matched_as_parsed_json() -> None:
    f = compile_filters(['{ "body" : { "RequestCode" : [ "BBBB" ] } }'])
    body = orjson.dumps({"RecordNumber": 1234, "RequestCode": "BBBB"}).decode()
    assert sqs_record_matches(f, _record(body))
    assert not sqs_record_matches(f, _record('{"RequestCode": "AAAA"}'))
    numeric = compile_filters([{"body": {"RecordNumber": [{"numeric": [">", 9999]}]}}])
    assert not sqs_record_matches(numeric, _record(body))
    assert sqs_record_matches(numeric, _record('{"RecordNumber": 10000}'))


def test_sqs_plain_string_body_only_matches_a_plain_string_pattern() -> None:
    field_pattern = compile_filters([{"body": {"RequestCode": ["BBBB"]}}])
    assert not sqs_record_matches(field_pattern, _record("RequestCode BBBB"))
    assert sqs_record_matches(compile_filters([{"body": ["hello"]}]), _record("hello"))
    prefix = compile_filters([{"body": [{"prefix": "Result: "}]}])
    assert sqs_record_matches(prefix, _record("Result: ok"))
    assert not sqs_record_matches(prefix, _record("Error: no"))


def test_sqs_body_exists_false_matches_a_non_json_body() -> None:
    f = compile_filters([{"body": {"RequestCode": [{"exists": False}]}}])
    assert sqs_record_matches(f, _record("plain"))
    assert not sqs_record_matches(f, _record('{"RequestCode": "x"}'))


def test_sqs_record_is_not_modified_and_metadata_filters_work() -> None:
    record = _record('{"a": 1}')
    f = compile_filters([{"attributes": {"ApproximateReceiveCount": ["1"]}, "body": {"a": [1]}}])
    assert sqs_record_matches(f, record)
    assert record["body"] == '{"a": 1}'
    only_meta = compile_filters([{"messageId": ["m1"]}])
    assert sqs_record_matches(only_meta, _record("not json"))
    assert not sqs_record_matches(only_meta, {**_record("x"), "messageId": "m2"})
