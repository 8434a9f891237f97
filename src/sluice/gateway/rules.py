"""ALB listener rules: conditions on host, path, method, headers, query string and source IP,
evaluated lowest priority first; the first rule whose conditions all hold wins.

Matching follows ALB: host names, header values and query strings compare case-insensitively,
path patterns case-sensitively, methods exactly; ``*`` matches any run of characters and ``?``
exactly one. Within one condition the values are alternatives.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from sluice.app import RuleSpec
from sluice.errors import ValidationError
from sluice.gateway.wire import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def wildcard(patterns: Sequence[str], *, ignore_case: bool) -> re.Pattern[str]:
    """One regex matching any of the ALB wildcard ``patterns`` in full."""
    alternatives = (re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns)
    return re.compile("(?:" + "|".join(alternatives) + r")\Z", re.IGNORECASE if ignore_case else 0)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    spec: RuleSpec
    host: re.Pattern[str] | None
    path: re.Pattern[str] | None
    methods: frozenset[str]
    headers: tuple[tuple[str, re.Pattern[str]], ...]
    query: tuple[tuple[str | None, re.Pattern[str]], ...]
    networks: tuple[Network, ...]

    def matches(self, request: Request) -> bool:
        if self.methods and request.method not in self.methods:
            return False
        if self.path is not None and self.path.match(unquote(request.path)) is None:
            return False
        if self.host is not None and self.host.match(request.host) is None:
            return False
        for name, pattern in self.headers:
            if not any(pattern.match(v) for v in request.header_values(name)):
                return False
        if self.query and not self._query_matches(request.query):
            return False
        if self.networks:
            try:
                ip = ipaddress.ip_address(request.client[0])
            except ValueError:
                return False
            if not any(ip in net for net in self.networks):
                return False
        return True

    def _query_matches(self, query: str) -> bool:
        pairs = parse_qsl(query, keep_blank_values=True)
        return any(
            (key is None or k.lower() == key) and pattern.match(v) is not None
            for key, pattern in self.query
            for k, v in pairs
        )


def compile_rule(spec: RuleSpec) -> CompiledRule:
    try:
        networks = tuple(ipaddress.ip_network(c, strict=False) for c in spec.source_ip)
    except ValueError as exc:
        raise ValidationError(f"rule {spec.priority}: source_ip: {exc}") from None
    for p in spec.path:
        if not p.startswith("/") and p != "*":
            raise ValidationError(f"rule {spec.priority}: path pattern {p!r} must start with '/'")
    return CompiledRule(
        spec=spec,
        host=wildcard(spec.host, ignore_case=True) if spec.host else None,
        path=wildcard(spec.path, ignore_case=False) if spec.path else None,
        methods=frozenset(spec.method),
        headers=tuple(
            (name.lower(), wildcard(values, ignore_case=True))
            for name, values in spec.headers.items()
        ),
        query=tuple(
            (key.lower() if key is not None else None, wildcard([value], ignore_case=True))
            for key, value in spec.query
        ),
        networks=networks,
    )


class RuleTable:
    def __init__(self, specs: Sequence[RuleSpec]) -> None:
        prioritised = [s for s in specs if s.priority is not None]
        self.rules = [compile_rule(s) for s in sorted(prioritised, key=lambda s: s.priority or 0)]
        defaults = [s for s in specs if s.priority is None]
        if len(defaults) > 1:
            raise ValidationError("only one default rule is allowed")
        self.default: RuleSpec | None = defaults[0] if defaults else None

    def match(self, request: Request) -> RuleSpec | None:
        """The first matching rule by priority; the default rule is not considered here."""
        for rule in self.rules:
            if rule.matches(request):
                return rule.spec
        return None
