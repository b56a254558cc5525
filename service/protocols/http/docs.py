"""The API's description over HTTP: GET /openapi.json (the generated OpenAPI document), /docs
(Swagger UI rendering it) and / (which redirects there).

Swagger UI's files are the copy BentoML ships (bentoml is pinned in pyproject.toml), served from
where the package is installed: no CDN, no tag manager, and the page's Content-Security-Policy
lets it reach this server only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from service.core.errors import RouteNotFound
from service.protocols.http.common import error_json, guarded
from service.protocols.http.errors import method_not_allowed


def swagger_ui_folder() -> Path:
    """Swagger UI's files inside the installed bentoml package (found without importing it)."""
    spec = importlib.util.find_spec("bentoml")
    if spec is None or spec.origin is None:
        raise RuntimeError("bentoml is not installed")
    return Path(spec.origin).parent / "_internal" / "server" / "static_content"


SWAGGER_UI = ("swagger-ui.css", "swagger-ui-bundle.js")
"""The files of Swagger UI the page loads (BaseLayout needs no standalone preset)."""
INIT_JS = """window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""
# NOTE: validatorUrl null: Swagger UI would otherwise fetch a badge from validator.swagger.io.
# URLs are relative to /docs, so the page also works behind a proxy that adds a path prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>deepserve API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""Swagger UI sets inline styles; everything else comes from this server."""
PATHS = ("/", "/docs", "/openapi.json", *(f"/docs/{name}" for name in (*SWAGGER_UI, "init.js")))
"""Every path the docs app serves (open without an API key when the setting open_docs is on)."""
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript"}


def build_app(document: Callable[[], dict[str, Any]]) -> Starlette:
    """The docs routes (mounted at "/"); `document` builds the OpenAPI document at request time."""
    folder = swagger_ui_folder()
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"}

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document())

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, **headers})

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name == "init.js":
            return Response(INIT_JS, media_type="text/javascript", headers=headers)
        if name not in SWAGGER_UI:
            return error_json(RouteNotFound(f"no file /docs/{name[:100]}"))
        path = folder / name
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)

    async def home(request: Request) -> Response:
        return RedirectResponse("docs", 307)

    routes = [
        Route("/openapi.json", guarded(openapi_json), methods=["GET"]),
        Route("/docs", page, methods=["GET"], include_in_schema=False),
        Route("/docs/{asset}", asset, methods=["GET"], include_in_schema=False),
        Route("/", home, methods=["GET"], include_in_schema=False),
    ]
    return Starlette(routes=routes, exception_handlers={405: method_not_allowed})
