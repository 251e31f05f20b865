"""GET /openapi.json (generated from the routes) and Swagger UI at /swagger/, fully offline.

The Swagger UI files come from the `swagger_ui_bundle` package installed with the gateway; the
page and its initializer are ours and point the UI at /openapi.json. No CDN, no network.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
from werkzeug.exceptions import NotFound

from gateway import openapi
from gateway.openapi import Operation, operation
from gateway.ui.pages import CSP as PAGE_CSP

bp = Blueprint("docs", __name__)
KEY = "gputel.openapi"
ASSETS = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)
PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>gputel gateway - Swagger UI</title>
    <link rel="stylesheet" type="text/css" href="swagger-ui.css">
    <link rel="icon" type="image/png" href="favicon-32x32.png" sizes="32x32">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="gputel-init.js" charset="UTF-8"></script>
  </body>
</html>
"""
# The token the web view keeps for this tab (gateway/ui/static/common.js, `gputel.token`)
# goes with every request the page makes to this gateway: the document (`--auth-docs`) and
# "Try it out" calls (with `--auth-tokens`).
INIT_JS = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "../openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    requestInterceptor: function (req) {
      var token = sessionStorage.getItem("gputel.token");
      var sameOrigin = new URL(req.url, location.href).origin === location.origin;
      if (token && sameOrigin && !req.headers.Authorization) {
        req.headers.Authorization = "Bearer " + token;
      }
      return req;
    },
  });
};
"""


def cached_document(app: Flask) -> dict[str, Any]:
    """Return the app's OpenAPI document, built once per app."""
    doc: dict[str, Any] | None = app.extensions.get(KEY)
    if doc is None:
        doc = app.extensions[KEY] = openapi.document(app)
    return doc


@bp.get("/openapi.json")
@operation(
    Operation(
        summary="This OpenAPI document", tag="docs", response="application/json", strict_query=False
    )
)
def openapi_json() -> Response:
    """Return the OpenAPI document."""
    return jsonify(cached_document(current_app._get_current_object()))  # type: ignore[attr-defined]


@bp.get("/swagger/")
def swagger_page() -> Response:
    """Return the Swagger UI page, under the web view's policy (no framing, nothing from
    another host, no inline script: its start-up is `gputel-init.js`)."""
    response = Response(PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


@bp.get("/swagger/gputel-init.js")
def swagger_init() -> Response:
    """Return the script that points Swagger UI at /openapi.json."""
    return Response(INIT_JS, mimetype="text/javascript")


@bp.get("/swagger/<name>")
def swagger_asset(name: str) -> Response:
    """Return one file of the bundled Swagger UI distribution."""
    if name not in ASSETS:
        raise NotFound(f"no Swagger UI asset named {name[:64]!r}")
    return send_from_directory(str(swagger_ui_path), name, max_age=3600)
