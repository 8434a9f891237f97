"""Event filtering: Lambda FilterCriteria patterns (the EventBridge pattern language).

A pattern is a JSON object mirroring the record. Its leaves are lists of conditions, any of
which may match (OR); all the keys of one object must match (AND); nested objects recurse;
several patterns are OR'ed. Conditions: exact strings, numbers, booleans and null; ``prefix``,
``suffix`` (both also as ``{"equals-ignore-case": ...}``); ``equals-ignore-case``;
``anything-but`` (a value, a list, or a ``prefix`` / ``suffix`` / ``equals-ignore-case``);
``numeric`` ranges; ``exists``; ``cidr``; and ``$or`` between sub-patterns.

Matching follows the EventBridge model:

* Only leaves (strings, numbers, booleans, null) are values. A key holding an object or an
  empty list has no value: ``exists: true`` does not match it and ``exists: false`` does.
* An array in the record matches when any element matches; nested arrays are flattened. The
  keys of one pattern object must all match within the same array element.
* Strings and numbers never match each other (``"5"`` is not ``5``); numbers compare by value
  (``5`` is ``5.0``); booleans are not numbers.
* ``anything-but`` matches a value that is present and that its inner condition rejects, of
  any type (``{"anything-but": "a"}`` matches ``5`` and ``null``); a missing key never matches.

Patterns are validated when compiled: a bad one raises `ValidationError` naming the filter,
the path and the problem.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from sluice.errors import ValidationError

Test = Callable[[Any], bool]
_NUMERIC_OPS = ("=", "<", "<=", ">", ">=")
_MISSING = object()


class _Leaf:
    """The list of conditions at one leaf of a pattern (OR'ed)."""

    __slots__ = ("exact", "exists_false", "exists_true", "tests")

    def __init__(self) -> None:
        self.exact: set[Any] = set()  # strings, plus ("n", float) / ("b", bool) / None keys
        self.tests: list[Test] = []
        self.exists_true = False
        self.exists_false = False

    def matches(self, values: list[Any]) -> bool:
        if not values:
            return self.exists_false
        if self.exists_true:
            return True
        exact, tests = self.exact, self.tests
        for v in values:
            if _key(v) in exact:
                return True
            for test in tests:
                if test(v):
                    return True
        return False


class _Node:
    """One pattern object: every field must match, and one ``$or`` branch if there is one."""

    __slots__ = ("leaves", "nodes", "or_branches")

    def __init__(self) -> None:
        self.leaves: list[tuple[str, _Leaf]] = []
        self.nodes: list[tuple[str, _Node]] = []
        self.or_branches: list[_Node] = []

    def matches(self, obj: Any) -> bool:
        get = obj.get if isinstance(obj, dict) else _no_field
        for name, leaf in self.leaves:
            if not leaf.matches(_leaf_values(get(name, _MISSING))):
                return False
        for name, node in self.nodes:
            if not node.matches_value(get(name, _MISSING)):
                return False
        return not self.or_branches or any(b.matches(obj) for b in self.or_branches)

    def matches_value(self, value: Any) -> bool:
        objects = _objects(value)
        if not objects:  # missing, a scalar or no objects: only absence-tolerant patterns match
            return self.matches({})
        return any(self.matches(o) for o in objects)


class Filter:
    """Compiled filter patterns; `matches` is true when any pattern matches. With no
    patterns at all, every record matches (no filter criteria means no filtering)."""

    __slots__ = ("_nodes", "fields")

    def __init__(self, nodes: Sequence[_Node]) -> None:
        self._nodes = tuple(nodes)
        # Top-level keys the patterns look at, so callers can skip preparing unused ones.
        self.fields: frozenset[str] = frozenset(_top_fields(nodes))

    def matches(self, record: Mapping[str, Any]) -> bool:
        if not self._nodes:
            return True
        return any(node.matches(record) for node in self._nodes)


def compile_filters(patterns: Sequence[Mapping[str, Any] | str]) -> Filter:
    """Validate and compile patterns (JSON objects, or their JSON text)."""
    nodes = []
    for i, pattern in enumerate(patterns):
        where = f"filter {i}"
        if isinstance(pattern, (str, bytes)):
            try:
                pattern = orjson.loads(pattern)
            except orjson.JSONDecodeError as exc:
                raise ValidationError(f"{where}: pattern is not valid JSON ({exc})") from None
        if not isinstance(pattern, Mapping):
            raise ValidationError(f"{where}: a pattern must be a JSON object")
        nodes.append(_compile_node(pattern, where, ""))
    return Filter(nodes)


def sqs_record_matches(filter: Filter, record: Mapping[str, Any]) -> bool:
    """Match an SQS event record the way Lambda does: a body that is valid JSON is matched as
    the parsed value (so ``{"body": {"field": [...]}}`` works); a body that is not JSON stays a
    plain string, which only a leaf condition on ``body`` itself can match."""
    if "body" not in filter.fields:
        return filter.matches(record)
    body = record.get("body")
    if isinstance(body, str):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = body
        view = dict(record)
        view["body"] = parsed
        return filter.matches(view)
    return filter.matches(record)


# ------------------------------------------------------------------------------- matching


def _no_field(_name: str, default: Any) -> Any:
    return default


def _key(value: Any) -> Any:
    """A hashable identity for exact matching that keeps types apart (True is not 1)."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        # Equal ints and floats are equal keys (5 meets 5.0), with no float() to overflow.
        return ("n", value)
    return ("?", id(value))


def _leaf_values(value: Any) -> list[Any]:
    if value is _MISSING or isinstance(value, dict):
        return []
    if isinstance(value, list):
        out: list[Any] = []
        _flatten_scalars(value, out)
        return out
    return [value]


def _flatten_scalars(items: list[Any], out: list[Any]) -> None:
    for item in items:
        if isinstance(item, list):
            _flatten_scalars(item, out)
        elif not isinstance(item, dict):
            out.append(item)


def _objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        out: list[dict[str, Any]] = []
        for item in value:
            out.extend(_objects(item))
        return out
    return []


def _top_fields(nodes: Sequence[_Node]) -> set[str]:
    fields: set[str] = set()
    for node in nodes:
        fields.update(name for name, _ in node.leaves)
        fields.update(name for name, _ in node.nodes)
        fields.update(_top_fields(node.or_branches))
    return fields


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ compiling


def _compile_node(pattern: Mapping[str, Any], where: str, path: str) -> _Node:
    if not pattern:
        raise ValidationError(f"{where}: {path or 'the pattern'} is an empty object")
    node = _Node()
    for name, spec in pattern.items():
        if not isinstance(name, str):
            raise ValidationError(f"{where}: field names must be strings, got {name!r}")
        here = f"{path}.{name}" if path else name
        if name == "$or":
            node.or_branches = _compile_or(spec, where, here)
        elif isinstance(spec, Mapping):
            node.nodes.append((name, _compile_node(spec, where, here)))
        elif isinstance(spec, list):
            node.leaves.append((name, _compile_leaf(spec, where, here)))
        else:
            raise ValidationError(
                f"{where}: {here}: match values must be in a list, e.g. [{_json(spec)}]"
            )
    return node


def _compile_or(spec: Any, where: str, path: str) -> list[_Node]:
    if not isinstance(spec, list) or len(spec) < 2:
        raise ValidationError(f"{where}: {path} must be a list of at least two patterns")
    branches = []
    for i, branch in enumerate(spec):
        if not isinstance(branch, Mapping):
            raise ValidationError(f"{where}: {path}[{i}] must be a pattern object")
        branches.append(_compile_node(branch, where, f"{path}[{i}]"))
    return branches


def _compile_leaf(conditions: list[Any], where: str, path: str) -> _Leaf:
    if not conditions:
        raise ValidationError(f"{where}: {path}: an empty list matches nothing")
    leaf = _Leaf()
    for condition in conditions:
        if isinstance(condition, Mapping):
            _compile_operator(leaf, condition, where, path)
        elif condition is None or isinstance(condition, (str, bool)):
            leaf.exact.add(_key(condition))
        elif _is_number(condition):
            _finite(condition, f"{where}: {path}")
            leaf.exact.add(_key(condition))
        else:
            raise ValidationError(f"{where}: {path}: {_json(condition)} is not a match value")
    return leaf


def _compile_operator(leaf: _Leaf, condition: Mapping[str, Any], where: str, path: str) -> None:
    if len(condition) != 1:
        raise ValidationError(
            f"{where}: {path}: an operator object has exactly one key, got {_json(condition)}"
        )
    ((op, arg),) = condition.items()
    at = f"{where}: {path}: {op}"
    if op == "exists":
        if not isinstance(arg, bool):
            raise ValidationError(f"{at} takes true or false")
        if arg:
            leaf.exists_true = True
        else:
            leaf.exists_false = True
    elif op in ("prefix", "suffix"):
        leaf.tests.append(_affix_test(op, arg, at))
    elif op == "equals-ignore-case":
        leaf.tests.append(_ignore_case_test(arg, at))
    elif op == "anything-but":
        leaf.tests.append(_anything_but_test(arg, at))
    elif op == "numeric":
        leaf.tests.append(_numeric_test(arg, at))
    elif op == "cidr":
        leaf.tests.append(_cidr_test(arg, at))
    else:
        raise ValidationError(f"{where}: {path}: unknown operator {op!r}")


def _affix_test(op: str, arg: Any, at: str) -> Test:
    ignore_case = False
    if isinstance(arg, Mapping) and set(arg) == {"equals-ignore-case"}:
        arg, ignore_case = arg["equals-ignore-case"], True
    if not isinstance(arg, str):
        raise ValidationError(f"{at} takes a string (or {{'equals-ignore-case': string}})")
    if ignore_case:
        folded = arg.lower()
        if op == "prefix":
            return lambda v: isinstance(v, str) and v.lower().startswith(folded)
        return lambda v: isinstance(v, str) and v.lower().endswith(folded)
    if op == "prefix":
        return lambda v: isinstance(v, str) and v.startswith(arg)
    return lambda v: isinstance(v, str) and v.endswith(arg)


def _ignore_case_test(arg: Any, at: str) -> Test:
    values = arg if isinstance(arg, list) else [arg]
    if not values or not all(isinstance(v, str) for v in values):
        raise ValidationError(f"{at} takes a string or a non-empty list of strings")
    folded = frozenset(v.lower() for v in values)
    return lambda v: isinstance(v, str) and v.lower() in folded


def _anything_but_test(arg: Any, at: str) -> Test:
    if isinstance(arg, Mapping):
        if len(arg) != 1:
            raise ValidationError(f"{at} takes one of prefix, suffix or equals-ignore-case")
        ((op, inner),) = arg.items()
        if op in ("prefix", "suffix"):
            if not isinstance(inner, str) or not inner:
                raise ValidationError(f"{at}: {op} takes a non-empty string")
            rejected = _affix_test(op, inner, at)
        elif op == "equals-ignore-case":
            rejected = _ignore_case_test(inner, f"{at}: {op}")
        else:
            raise ValidationError(f"{at}: {op!r} cannot be used inside anything-but")
        return lambda v: not rejected(v)
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise ValidationError(f"{at} needs at least one value")
    if all(isinstance(v, str) for v in values):
        excluded = frozenset(values)
    elif all(_is_number(v) for v in values):
        for v in values:
            _finite(v, at)
        excluded = frozenset(_key(v) for v in values)
    else:
        raise ValidationError(f"{at} takes strings or numbers (not mixed), got {_json(arg)}")
    return lambda v: _key(v) not in excluded


def _numeric_test(arg: Any, at: str) -> Test:
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise ValidationError(f'{at} takes [op, number] or [op, number, op, number], e.g. [">", 0]')
    bounds: list[tuple[str, float]] = []
    for i in range(0, len(arg), 2):
        op, number = arg[i], arg[i + 1]
        if op not in _NUMERIC_OPS:
            raise ValidationError(f"{at}: {op!r} is not one of {', '.join(_NUMERIC_OPS)}")
        if not _is_number(number):
            raise ValidationError(f"{at}: {op} needs a number, got {_json(number)}")
        _finite(number, at)
        bounds.append((op, float(number)))
    if len(bounds) == 2:
        (low_op, low), (high_op, high) = bounds
        if low_op not in (">", ">=") or high_op not in ("<", "<="):
            raise ValidationError(f"{at}: a range is a lower bound (> or >=) then an upper one")
        if low >= high:
            raise ValidationError(f"{at}: the lower bound {low:g} is not below {high:g}")
    checks = [_comparison(op, number) for op, number in bounds]
    return lambda v: _is_number(v) and all(check(v) for check in checks)


def _comparison(op: str, number: float) -> Test:
    if op == "=":
        return lambda v: v == number
    if op == "<":
        return lambda v: v < number
    if op == "<=":
        return lambda v: v <= number
    if op == ">":
        return lambda v: v > number
    return lambda v: v >= number


def _cidr_test(arg: Any, at: str) -> Test:
    if not isinstance(arg, str):
        raise ValidationError(f"{at} takes a CIDR string such as '10.0.0.0/24'")
    try:
        network = ipaddress.ip_network(arg, strict=False)
    except ValueError:
        raise ValidationError(f"{at}: {arg!r} is not an IP network") from None

    def test(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            return ipaddress.ip_address(v) in network
        except ValueError:
            return False

    return test


def _finite(number: float, at: str) -> None:
    if isinstance(number, float) and not math.isfinite(number):
        raise ValidationError(f"{at}: numbers must be finite")


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
