"""The dashboard at /ui: three static files (page, script, style sheet) served as they are.

The page holds no data and needs no token: its script reads the JSON API with the token the
operator pastes, kept in sessionStorage. Every file is answered with a Content-Security-Policy
that allows only this server's own script, style and connections, so neither an injected
string nor a third-party host can run code in the page.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

#: The policy of every /ui response: nothing inline, nothing from elsewhere, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the installed version; revalidate rather than keep a stale copy.
    "Cache-Control": "no-cache",
}
#: URL path -> (file under static/, media type).
FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}


def _static_file(path: str, name: str, media_type: str) -> Route:
    body = (resources.files(__package__) / "static" / name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    serve.__name__ = f"ui_{name.replace('.', '_')}"
    return Route(path, serve, methods=["GET"])


def routes() -> list[Route]:
    """The /ui routes (GET and HEAD), their files read once."""
    return [_static_file(path, name, media_type) for path, (name, media_type) in FILES.items()]
