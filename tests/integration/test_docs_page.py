"""The Swagger UI page (/docs) of the live service in a real browser: headless Chromium (Debian's
`chromium`, installed by `make apt`) renders it from the generated /openapi.json, and its network
log shows that the page requested nothing from anywhere but the server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loadtests.server import Server, running_server

pytestmark = pytest.mark.models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OPERATIONS = ["/v1/classify", "/v1/transcribe", "/v2/models/{model_name}/infer"]
XML_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
"""URLs in an SVG's markup that name a namespace; a browser never requests them."""
LOCAL = re.compile(r"https?://127\.0\.0\.1(:\d+)?(/|$)")


def render(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM of `url` once its scripts have run, and the URLs of every request the page made
    (the browser's own background requests, which are no page's, left out)."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `make apt` (Debian package chromium)")
    netlog = tmp_path / "netlog.json"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # NOTE: needed as root (containers, CI)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--disable-extensions",
        # nothing leaves the machine, whatever the browser itself would like to fetch
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--log-net-log={netlog}",
        # virtual time stands still while requests are in flight: the DOM is dumped after
        # /openapi.json has arrived and rendered, however slow the machine
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout, page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests made for a page: those whose network isolation key is a page's
    (the browser's own requests have none, or a Google one)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start and "url" in params:
            top_frame = params.get("network_isolation_key", "").split(" ")[0]
            if top_frame.startswith("http://127.0.0.1"):
                urls.append(params["url"])
    return urls


def check_page(dom: str, requested: list[str], origin: str) -> None:
    paths = set(re.findall(r'data-path="([^"]+)"', dom))  # one per rendered operation
    assert set(OPERATIONS) <= paths, dom[-3000:]
    assert "googletagmanager" not in dom and "swagger-ui" in dom
    external = {u for u in re.findall(r"https?://[^\s\"'<>)]+", dom) if not LOCAL.match(u)}
    assert external <= XML_NAMESPACES, external
    assert f"{origin}/openapi.json" in requested and f"{origin}/docs" in requested, requested
    assert all(LOCAL.match(url) for url in requested), requested


@pytest.mark.parametrize("server", ["local"], indirect=True)
def test_docs_page_renders_every_operation_from_local_files_only(server, tmp_path) -> None:
    dom, requested = render(f"{server.url}/docs", tmp_path)
    check_page(dom, requested, server.url)
    # the HTTP metrics label the page's requests by route template, not by file
    exposition = requests.get(f"{server.url}/metrics", timeout=30).text
    routes = set(re.findall(r'deepserve_http_requests_total\{[^}]*route="([^"]+)"', exposition))
    assert {"/docs", "/docs/{asset}", "/openapi.json"} <= routes, routes
    assert not any("swagger" in route for route in routes), routes


@pytest.mark.parametrize("server", ["local"], indirect=True)
def test_home_leads_to_the_docs(server, tmp_path) -> None:
    home = requests.get(server.url, timeout=30, allow_redirects=False)
    assert home.status_code in (302, 307) and home.headers["location"] in ("docs", "/docs")
    followed = requests.get(server.url, timeout=30)
    assert followed.url == f"{server.url}/docs" and "swagger-ui-bundle.js" in followed.text
    dom, requested = render(f"{server.url}/", tmp_path)  # the browser follows the redirect
    check_page(dom, requested, server.url)


KEY = "docs-test-key-7c1e"  # test-only


@pytest.fixture(scope="module")
def secured_open_docs(tmp_path_factory) -> Iterator[Server]:
    """API keys on, the docs open (DEEPSERVE_OPEN_DOCS), one small model."""
    env = {
        "DEEPSERVE_MODELS": '["sentiment-lstm"]',
        "DEEPSERVE_API_KEY": KEY,
        "DEEPSERVE_OPEN_DOCS": "true",
    }
    with running_server(tmp_path_factory.mktemp("open-docs"), env) as server:
        yield server


def test_open_docs_with_api_keys(secured_open_docs, tmp_path) -> None:
    url = secured_open_docs.url
    assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
    document = requests.get(f"{url}/openapi.json", timeout=30)
    assert document.status_code == 200
    assert document.json()["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    dom, requested = render(f"{url}/docs", tmp_path)
    assert "sentiment" in dom and "authorize" in dom.lower()  # Swagger UI's key dialog
    assert all(LOCAL.match(u) for u in requested), requested
