"""API Gateway HTTP API routes: ``METHOD /path/{param}/{proxy+}``, ``ANY``, ``$default``.

Precedence is API Gateway's: the most specific path wins, compared segment by segment (a literal
segment over ``{param}`` over a greedy ``{proxy+}``); for the same path a route naming the method
wins over ``ANY``; ``$default`` catches what nothing else matched. The table is compiled once into
a dict of fully literal paths plus a segment trie, so a lookup walks the path at most once per
alternative it has to try.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from sluice.app import RouteSpec
from sluice.errors import ValidationError

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"})
DEFAULT = "$default"
_PARAM = re.compile(r"^\{([A-Za-z0-9_.-]+)(\+?)\}$")


@dataclass(frozen=True, slots=True)
class Route:
    spec: RouteSpec
    method: str  # "" for $default
    path: str
    params: tuple[tuple[int, str], ...] = ()  # (segment index, name)
    greedy: tuple[int, str] | None = None

    def parameters(self, segments: Sequence[str]) -> dict[str, str]:
        out = {name: unquote(segments[i]) for i, name in self.params}
        if self.greedy is not None:
            i, name = self.greedy
            out[name] = unquote("/".join(segments[i:]))
        return out


@dataclass(slots=True)
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    methods: dict[str, Route] = field(default_factory=dict)  # routes ending here
    greedy: dict[str, Route] = field(default_factory=dict)  # {x+} routes at this position


def parse_route_key(route_key: str) -> tuple[str, str, list[str]]:
    """Split "GET /a/{b}" into method, path and segments, refusing what API Gateway refuses."""
    if route_key == DEFAULT:
        return "", "", []
    method, sep, path = route_key.partition(" ")
    if not sep or method not in METHODS or not path.startswith("/"):
        raise ValidationError(
            f"route key {route_key!r}: expected '$default' or 'METHOD /path' with METHOD one of "
            + ", ".join(sorted(METHODS))
        )
    segments = path[1:].split("/") if path != "/" else []
    for i, seg in enumerate(segments):
        m = _PARAM.match(seg)
        if m is None and ("{" in seg or "}" in seg):
            raise ValidationError(f"route key {route_key!r}: bad path variable {seg!r}")
        if m is not None and m.group(2) and i != len(segments) - 1:
            raise ValidationError(f"route key {route_key!r}: a greedy {seg} must come last")
    return method, path, segments


def _compile(spec: RouteSpec) -> tuple[Route, list[str]]:
    method, path, segments = parse_route_key(spec.route_key)
    params: list[tuple[int, str]] = []
    greedy = None
    for i, seg in enumerate(segments):
        m = _PARAM.match(seg)
        if m is not None:
            if m.group(2):
                greedy = (i, m.group(1))
            else:
                params.append((i, m.group(1)))
    return Route(spec, method, path, tuple(params), greedy), segments


class RouteTable:
    def __init__(self, specs: Sequence[RouteSpec]) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._root = _Node()
        self.default: Route | None = None
        self.routes: list[Route] = []
        seen: set[tuple[str, str]] = set()
        for spec in specs:
            route, segments = _compile(spec)
            # "{id}" and "{name}" at one position are the same route to API Gateway.
            shape = (route.method, "/".join("{}" if "{" in s else s for s in segments))
            if shape in seen or (route.method == "" and self.default is not None):
                raise ValidationError(f"route {spec.route_key!r} is declared twice")
            seen.add(shape)
            self.routes.append(route)
            if route.method == "":
                self.default = route
            elif not route.params and route.greedy is None:
                self._exact.setdefault(route.path, {})[route.method] = route
                self._insert(segments, route)
            else:
                self._insert(segments, route)

    def _insert(self, segments: list[str], route: Route) -> None:
        node = self._root
        for i, seg in enumerate(segments):
            if route.greedy is not None and i == route.greedy[0]:
                node.greedy[route.method] = route
                return
            if "{" in seg:
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.literal.setdefault(seg, _Node())
        node.methods[route.method] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route for a request and its path parameters, or None (no route, no $default)."""
        exact = self._exact.get(path)
        if exact is not None:
            route = exact.get(method) or exact.get("ANY")
            if route is not None:
                return route, {}
        segments = path[1:].split("/") if path != "/" else []
        found = _search(self._root, segments, 0, method)
        if found is not None:
            return found, found.parameters(segments)
        if self.default is not None:
            return self.default, {}
        return None


def _search(node: _Node, segments: list[str], i: int, method: str) -> Route | None:
    if i == len(segments):
        return node.methods.get(method) or node.methods.get("ANY")
    seg = segments[i]
    child = node.literal.get(seg)
    if child is not None:
        found = _search(child, segments, i + 1, method)
        if found is not None:
            return found
    if node.param is not None and seg:
        found = _search(node.param, segments, i + 1, method)
        if found is not None:
            return found
    if node.greedy and any(segments[i:]):
        return node.greedy.get(method) or node.greedy.get("ANY")
    return None
