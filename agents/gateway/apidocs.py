"""The gateway's API docs, offline: Swagger UI from the package's vendored copy (ops/vendor), no CDN."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

SWAGGER_UI = "/static/vendor/swagger-ui/"


def add_docs(app: FastAPI, path: str = "/api/docs") -> None:
    """Serve Swagger UI for ``app``'s OpenAPI document at ``path``, every asset from /static."""

    @app.get(path, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=SWAGGER_UI + "swagger-ui-bundle.js",
            swagger_css_url=SWAGGER_UI + "swagger-ui.css",
            swagger_favicon_url=SWAGGER_UI + "favicon-32x32.png",
        )
