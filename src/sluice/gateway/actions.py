"""ALB actions answered by the gateway itself: fixed responses and redirects."""

from __future__ import annotations

from sluice.app import FixedResponse, Redirect
from sluice.gateway.wire import Request, Response


class Fixed:
    def __init__(self, action: FixedResponse) -> None:
        self.response = Response(
            action.status, [(b"content-type", action.content_type.encode())], action.body.encode()
        )

    def __call__(self, request: Request, params: dict[str, str]) -> Response:
        r = self.response
        return Response(r.status, list(r.headers), r.body)


class RedirectTarget:
    """ALB redirect: each URL part is a template over the request's own parts."""

    def __init__(self, action: Redirect) -> None:
        self.action = action

    def __call__(self, request: Request, params: dict[str, str]) -> Response:
        a = self.action
        tail = (request.header("host") or "").rsplit("]", 1)[-1]  # past an IPv6 literal
        _, sep, port = tail.rpartition(":")
        values = {
            "#{protocol}": "http",
            "#{host}": request.host,
            "#{port}": port if sep and port.isdigit() else str(request.server_port),
            "#{path}": request.path.lstrip("/"),
            "#{query}": request.query,
        }

        def fill(template: str) -> str:
            for key, value in values.items():
                template = template.replace(key, value)
            return template

        protocol = fill(a.protocol).lower()
        port = fill(a.port)
        default_port = {"http": "80", "https": "443"}.get(protocol)
        netloc = fill(a.host) + ("" if port == default_port else f":{port}")
        path = fill(a.path)
        query = fill(a.query)
        location = f"{protocol}://{netloc}{path if path.startswith('/') else '/' + path}"
        if query:
            location += f"?{query}"
        return Response(a.status, [(b"location", location.encode())])
