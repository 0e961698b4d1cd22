"""CORS for the platform's browser UI (``RFUAV_CORS_ORIGINS``) on a running service with a token:
the listed origins get the allow headers, credentials and ``Authorization`` included, on the
preflight (which the token check does not block) and on the answer itself, SSE too; any other
origin gets no ``Access-Control-*`` header at all; without the setting, nobody does."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support.service import Service

pytestmark = [pytest.mark.timeout(120)]

UI = "https://ui.example:8443"
OTHER = "https://evil.example"
TOKEN = "cors-token"


def _cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def _preflight(
    svc: Service, path: str, origin: str, method: str = "POST", headers: str = "authorization, content-type"
):  # type: ignore[no-untyped-def]
    return httpx.options(svc.url(path), timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
    })  # fmt: skip


@pytest.fixture()
def svc(make_service: Callable[..., Service]) -> Service:
    return make_service(RFUAV_CORS_ORIGINS=f"{UI}/, http://localhost:3000", RFUAV_API_TOKEN=TOKEN)


def test_preflight_from_an_allowed_origin_passes_without_the_token(svc: Service) -> None:
    for path in ("/api/v2/training/start", "/api/v2/tasks/x/cancel", "/api/v1/info"):
        r = _preflight(svc, path, UI)
        assert r.status_code == 200, r.text
        cors = _cors_headers(r)
        assert cors["access-control-allow-origin"] == UI
        assert cors["access-control-allow-credentials"] == "true"
        assert "authorization" in cors["access-control-allow-headers"].lower()
        assert {"GET", "POST", "DELETE"} <= set(cors["access-control-allow-methods"].replace(" ", "").split(","))
        assert "Origin" in r.headers["vary"]
    r = _preflight(svc, "/api/v2/tasks/x", "http://localhost:3000", method="DELETE", headers="authorization")
    assert r.status_code == 200 and _cors_headers(r)["access-control-allow-origin"] == "http://localhost:3000"


def test_preflight_from_another_origin_gets_no_allow_header(svc: Service) -> None:
    for origin in (OTHER, "https://ui.example", "http://ui.example:8443", svc.base_url):
        r = _preflight(svc, "/api/v2/training/start", origin)
        assert r.status_code == 400, (origin, r.text)
        assert _cors_headers(r) == {}, origin
        assert r.json()["code"] == 400 and "origin not allowed" in r.json()["msg"]
        assert origin not in r.text  # a refused value is not echoed
    # An allowed origin asking for a method or header the API does not take: refused too.
    assert _preflight(svc, "/api/v2/training/start", UI, method="PUT").status_code == 400
    r = _preflight(svc, "/api/v2/training/start", UI, headers="authorization, x-custom")
    assert r.status_code == 400 and "headers not allowed" in r.json()["msg"]


def test_simple_requests_carry_the_headers_for_allowed_origins_only(svc: Service) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(svc.url("/api/v2/resources"), headers={"Origin": UI, **auth}, timeout=30)
    assert r.status_code == 200
    assert _cors_headers(r) == {"access-control-allow-origin": UI, "access-control-allow-credentials": "true"}
    # The token check still applies to the request itself, and the UI can read the refusal.
    r = httpx.get(svc.url("/api/v2/resources"), headers={"Origin": UI}, timeout=30)
    assert r.status_code == 401 and _cors_headers(r)["access-control-allow-origin"] == UI
    # Another origin: the answer is the same (the server does not block), but without any
    # Access-Control-* header the browser hides it from that page.
    for headers in ({"Origin": OTHER, **auth}, {"Origin": OTHER}):
        r = httpx.get(svc.url("/api/v2/resources"), headers=headers, timeout=30)
        assert _cors_headers(r) == {} and "Origin" in r.headers["vary"]
    r = httpx.get(svc.url("/api/v1/info"), headers={"Origin": OTHER}, timeout=30)
    assert r.status_code == 200 and _cors_headers(r) == {}
    # An SSE stream to the UI carries them too.
    task = svc.client.start_diagnostic(events=2)
    svc.client.wait_for(task["task_id"], timeout=60)
    with httpx.stream("GET", svc.url(f"/api/v2/tasks/{task['task_id']}/events"), headers={"Origin": UI, **auth},
                      timeout=30) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert _cors_headers(r)["access-control-allow-origin"] == UI
        assert "data: " in r.read().decode()


def test_without_the_setting_no_origin_gets_cors_headers(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    r = _preflight(svc, "/api/v2/training/start", UI)
    assert _cors_headers(r) == {} and r.status_code != 200
    r = httpx.get(svc.url("/api/v2/resources"), headers={"Origin": UI}, timeout=30)
    assert r.status_code == 200 and _cors_headers(r) == {}
