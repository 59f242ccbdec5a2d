"""/docs and /redoc work without internet access: every asset their pages load comes from the app."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

# src="..." / href="..." attributes, and the spec and redirect URLs in Swagger UI's inline config.
_ATTR_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_CONFIG_URL = re.compile(r"""(?:url|oauth2RedirectUrl|spec-url)\s*[:=]\s*["']([^"']+)["']""")


def _asset_urls(html: str) -> list[str]:
    return _ATTR_URL.findall(html)


@pytest.mark.parametrize(
    ("page", "expected_types"),
    [
        (
            "/docs",
            {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"},
        ),
        ("/redoc", {"redoc.standalone.js": "javascript", "favicon.png": "image/png"}),
    ],
)
def test_docs_page_loads_only_same_origin_assets(api, page: str, expected_types: dict[str, str]) -> None:
    resp = api.get(page)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    # No absolute URL at all: a CDN, Google Fonts or a remote favicon would each need the internet.
    assert re.search(r"(?:https?:)?//[a-z0-9]", html, re.IGNORECASE) is None, html

    assets = _asset_urls(html)
    assert {u.rsplit("/", 1)[-1] for u in assets} >= set(expected_types), assets
    for url in assets:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        asset = api.get(url)
        assert asset.status_code == 200, url
        name = url.rsplit("/", 1)[-1]
        assert expected_types[name] in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 1000, url  # the real bundle, not an empty placeholder

    spec_urls = _CONFIG_URL.findall(html)
    assert "/openapi.json" in spec_urls, spec_urls
    assert api.get("/openapi.json").status_code == 200


def test_swagger_oauth2_redirect_page_is_still_served(api) -> None:
    resp = api.get("/docs/oauth2-redirect")
    assert resp.status_code == 200
    assert "oauth2" in resp.text.lower()


def test_missing_docs_asset_is_a_404_not_a_500(api) -> None:
    for url in ("/docs-assets/no-such-file.js", "/docs-assets/../app.py"):
        resp = api.get(url)
        assert resp.status_code == 404, url
        assert resp.json()["error"]["code"] == "not_found"
