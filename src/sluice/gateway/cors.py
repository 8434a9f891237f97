"""CORS for one API, as API Gateway HTTP APIs do it: preflight requests are answered by the
gateway itself (204, never reaching a target), and every other response to an allowed origin
carries the Access-Control headers."""

from __future__ import annotations

from sluice.app import CorsConfig
from sluice.gateway.wire import Request, Response


class Cors:
    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(config.allow_origins)
        self.methods = ",".join(config.allow_methods).encode()
        self.any_header = "*" in config.allow_headers
        self.headers = ",".join(config.allow_headers).encode()
        self.expose = ",".join(config.expose_headers).encode()

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.origins)

    def _origin_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        value = b"*" if self.any_origin and not self.config.allow_credentials else origin.encode()
        out = [(b"access-control-allow-origin", value), (b"vary", b"origin")]
        if self.config.allow_credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out

    @staticmethod
    def is_preflight(request: Request) -> bool:
        return (
            request.method == "OPTIONS"
            and request.header("origin") is not None
            and request.header("access-control-request-method") is not None
        )

    def preflight(self, request: Request) -> Response:
        origin = request.header("origin")
        if not self.allowed(origin):
            return Response(204)  # no CORS headers: the browser refuses the actual request
        assert origin is not None
        headers = self._origin_headers(origin)
        if self.methods:
            headers.append((b"access-control-allow-methods", self.methods))
        if self.any_header:
            asked = request.header("access-control-request-headers")
            if asked:
                headers.append((b"access-control-allow-headers", asked.encode("latin-1")))
        elif self.headers:
            headers.append((b"access-control-allow-headers", self.headers))
        if self.config.max_age:
            headers.append((b"access-control-max-age", b"%d" % self.config.max_age))
        return Response(204, headers)

    def decorate(self, request: Request, response: Response) -> None:
        origin = request.header("origin")
        if not self.allowed(origin):
            return
        assert origin is not None
        response.headers.extend(self._origin_headers(origin))
        if self.expose:
            response.headers.append((b"access-control-expose-headers", self.expose))
