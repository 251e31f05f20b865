"""The web view's pages (/ui/…) and the redirect from / to them."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, url_for

from gateway.ui import pipeline

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
root = Blueprint("root", __name__)
# Scripts, styles and data only from this gateway: no CDN, no inline script, no other host.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


@root.get("/")
def index() -> Response:
    """Send people to the web view."""
    return redirect(url_for("ui.fleet"), code=302)  # type: ignore[return-value]


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def fleet() -> str:
    """Hosts and their GPUs, coloured by the latest value of a chosen metric."""
    return render_template("fleet.html", page="fleet")


@bp.get("/gpus/<path:uuid>")  # path: a `Hostname/gpu_id` identity has a `/`
def gpu(uuid: str) -> str:
    """One GPU: descriptor, latest values and a plot per metric over a window."""
    return render_template("gpu.html", page="gpu", uuid=uuid)


@bp.get("/pipeline")
def pipeline_page() -> str:
    """Topics, partitions, groups and lag, from the broker's Admin API."""
    return render_template("pipeline.html", page="pipeline", broker=pipeline.broker_address())


bp.add_url_rule("/api/pipeline", view_func=pipeline.snapshot)
