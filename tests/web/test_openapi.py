"""Schemathesis over /openapi.json against the real server: valid and invalid requests of every
operation never get a 5xx, and every JSON answer is the ``{code, msg, data}`` envelope with
``code`` equal to the HTTP status.

Every task limit is 0 in this service, so accepted submissions stay pending and nothing heavy
runs. ``POST /api/v2/resources/config`` is left out: random limits would start the queued tasks.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.support.service import Service
from tests.web.conftest import PENDING_ENV

EXAMPLES = 8
SKIP = {("POST", "/api/v2/resources/config")}


@pytest.mark.timeout(240)
def test_no_5xx_and_always_the_envelope(make_service: Any) -> None:
    svc: Service = make_service(**PENDING_ENV, RFUAV_LIMIT_CPU_DIAGNOSTIC="0")
    schema = schemathesis.openapi.from_url(svc.url("/openapi.json"))
    checked: list[str] = []
    unsatisfiable: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case: Any) -> None:
                response = case.call(base_url=svc.base_url, timeout=15)
                where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                assert response.status_code < 500, where
                ctype = response.headers.get("content-type") or [""]  # header -> list of values
                ctype = ctype[0] if isinstance(ctype, list) else ctype
                if ctype.startswith("application/json") and case.path != "/openapi.json":
                    body = response.json()
                    assert isinstance(body, dict) and set(body) == {"code", "msg", "data"}, where
                    assert body["code"] == response.status_code, where
                    if response.status_code >= 400:
                        assert body["msg"], where

            try:
                run()
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters or body.
                assert mode == GenerationMode.NEGATIVE, f"{op.method} {op.path}"
                unsatisfiable.append(f"{op.method.upper()} {op.path}")
        checked.append(f"{op.method.upper()} {op.path}")
    assert len(checked) >= 25, checked
    spec = httpx.get(svc.url("/openapi.json")).json()
    with_body = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m, o in ops.items() if "requestBody" in o}
    assert len(with_body) >= 8 and not with_body & set(unsatisfiable), unsatisfiable
    assert svc.supervisor.proc is not None and svc.supervisor.proc.poll() is None
    assert svc.web is not None and svc.web.poll() is None
