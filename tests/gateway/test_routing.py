"""Route precedence (API Gateway HTTP APIs) and rule matching (ALB listener rules)."""

from __future__ import annotations

import pytest

from sluice.app import App, RouteSpec, RuleSpec
from sluice.errors import ValidationError
from sluice.gateway.routing import RouteTable
from sluice.gateway.rules import RuleTable
from sluice.gateway.wire import Request


def table(*keys: str) -> RouteTable:
    return RouteTable([RouteSpec(k, f"function:f{i}") for i, k in enumerate(keys)])


def hit(t: RouteTable, method: str, path: str) -> tuple[str, dict[str, str]] | None:
    found = t.match(method, path)
    return None if found is None else (found[0].spec.route_key, found[1])


def test_exact_beats_parameter_beats_greedy_and_method_beats_any() -> None:
    t = table(
        "GET /pets/dog/1",
        "GET /pets/dog/{id}",
        "GET /pets/{proxy+}",
        "ANY /{proxy+}",
        "ANY /pets/dog/1",
        "$default",
    )
    assert hit(t, "GET", "/pets/dog/1") == ("GET /pets/dog/1", {})
    assert hit(t, "POST", "/pets/dog/1") == ("ANY /pets/dog/1", {})
    assert hit(t, "GET", "/pets/dog/2") == ("GET /pets/dog/{id}", {"id": "2"})
    assert hit(t, "GET", "/pets/cat/2") == ("GET /pets/{proxy+}", {"proxy": "cat/2"})
    assert hit(t, "POST", "/pets/cat/2") == ("ANY /{proxy+}", {"proxy": "pets/cat/2"})
    assert hit(t, "GET", "/") == ("$default", {})  # a greedy variable needs at least one segment


def test_literal_path_with_other_method_falls_back_to_parameter_route() -> None:
    t = table("POST /items/new", "GET /items/{id}")
    assert hit(t, "GET", "/items/new") == ("GET /items/{id}", {"id": "new"})
    assert hit(t, "DELETE", "/items/new") is None  # no route and no $default


def test_backtracking_across_levels_and_decoding() -> None:
    t = table("GET /a/{x}/c", "GET /a/b/d", "GET /files/{path+}")
    assert hit(t, "GET", "/a/b/c") == ("GET /a/{x}/c", {"x": "b"})
    assert hit(t, "GET", "/a/b/d") == ("GET /a/b/d", {})
    assert hit(t, "GET", "/a/%20z/c") == ("GET /a/{x}/c", {"x": " z"})
    assert hit(t, "GET", "/files/x/y%2Fz") == ("GET /files/{path+}", {"path": "x/y/z"})
    assert hit(t, "GET", "/a//c") is None  # an empty segment does not fill {x}


@pytest.mark.parametrize(
    "bad",
    ["GET", "FETCH /x", "GET x", "GET /{a+}/b", "GET /a{b}", "GET /{}"],
)
def test_invalid_route_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        table(bad)


def test_duplicate_routes_are_refused_even_with_other_variable_names() -> None:
    with pytest.raises(ValidationError, match="twice"):
        table("GET /a/{x}", "GET /a/{y}")
    with pytest.raises(ValidationError, match="twice"):
        table("$default", "$default")


def req(
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: str = "10.0.0.1",
) -> Request:
    return Request(
        method,
        path,
        query,
        headers or [(b"Host", b"api.example.com")],
        b"",
        (client, 5555),
        80,
        "rid",
        0.0,
    )


def rules(*specs: RuleSpec) -> RuleTable:
    return RuleTable(list(specs))


def test_rules_are_evaluated_by_priority_not_declaration_order() -> None:
    t = rules(
        RuleSpec(20, "function:b", path=("/api/*",)),
        RuleSpec(10, "function:a", path=("/api/v?/*",)),
    )
    assert t.match(req(path="/api/v1/x")).target == "function:a"  # type: ignore[union-attr]
    assert t.match(req(path="/api/x")).target == "function:b"  # type: ignore[union-attr]
    assert t.match(req(path="/other")) is None


def test_each_alb_condition() -> None:
    host = RuleSpec(1, "function:h", host=("*.example.com",))
    assert rules(host).match(req(headers=[(b"Host", b"API.Example.com:8080")]))
    assert not rules(host).match(req(headers=[(b"Host", b"example.com")]))

    path = RuleSpec(1, "function:p", path=("/Img/*.png",))
    assert rules(path).match(req(path="/Img/a/b.png"))
    assert not rules(path).match(req(path="/img/a.png"))  # path patterns are case-sensitive

    header = RuleSpec(1, "function:x", headers={"user-agent": ("*Mobile*",)})
    assert rules(header).match(req(headers=[(b"Host", b"h"), (b"User-Agent", b"x mobile y")]))
    assert not rules(header).match(req())

    method = RuleSpec(1, "function:m", method=("POST", "PUT"))
    assert rules(method).match(req(method="PUT"))
    assert not rules(method).match(req(method="GET"))

    query = RuleSpec(1, "function:q", query=(("version", "v2*"), (None, "beta")))
    assert rules(query).match(req(query="a=1&Version=V2.1"))
    assert rules(query).match(req(query="anything=beta"))
    assert not rules(query).match(req(query="version=v1"))

    ip = RuleSpec(1, "function:i", source_ip=("10.0.0.0/8", "2001:db8::/32"))
    assert rules(ip).match(req(client="10.9.8.7"))
    assert rules(ip).match(req(client="2001:db8::1"))
    assert not rules(ip).match(req(client="192.168.1.1"))


def test_conditions_are_and_values_are_or() -> None:
    spec = RuleSpec(1, "function:x", path=("/a", "/b"), method=("POST",))
    assert rules(spec).match(req("POST", "/b"))
    assert not rules(spec).match(req("GET", "/b"))


def test_app_rule_declarations_are_validated() -> None:
    app = App("r")
    app.rule(5, to="proxy:http://127.0.0.1:1", path="/x")
    with pytest.raises(ValidationError, match="priority 5"):
        app.rule(5, to="proxy:http://127.0.0.1:1", path="/y")
    with pytest.raises(ValidationError):
        app.rule(0, to="proxy:http://127.0.0.1:1", path="/y")
    with pytest.raises(ValidationError, match="at least one condition"):
        app.rule(6, to="proxy:http://127.0.0.1:1")
    with pytest.raises(ValidationError, match="no conditions"):
        app.rule(None, to="proxy:http://127.0.0.1:1", path="/y")
    with pytest.raises(ValidationError, match="target"):
        app.rule(7, to="lambda:x", path="/y")
    with pytest.raises(ValidationError, match="source_ip"):
        RuleTable([RuleSpec(1, "function:x", source_ip=("10.0.0.300/8",))])
