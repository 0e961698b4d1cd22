"""A service on a host with two GPUs, as the supervisor sees them through a fake NVML
(``tests/support/fake_nvml``, first on its ``PYTHONPATH``; everything past that import is the real
code): the start-up hardware summary in the supervisor's log is what ``rfuav gpu`` prints, and
the dashboard's device menus offer each GPU the API reports (in a real headless Chromium)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.test_cli import rfuav
from tests.support.service import Service

from .conftest import REPO

CHROMIUM = "/usr/bin/chromium"
FAKE_NVML = REPO / "tests" / "support" / "fake_nvml"
GIB = 1 << 30
GPUS = [
    {"name": "Fake GPU A", "total": 16 * GIB, "used": 12 * GIB, "free": 4 * GIB, "utilization": 90},
    {"name": "Fake GPU B", "total": 24 * GIB, "used": 1 * GIB, "free": 23 * GIB, "utilization": 5},
]

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    env = {
        "PYTHONPATH": os.pathsep.join([str(FAKE_NVML), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "FAKE_NVML": json.dumps({"gpus": GPUS}),
    }
    service = Service(env=env).start()
    try:
        yield service
    finally:
        service.close()


def test_rfuav_gpu_prints_the_summary_the_supervisor_logged(svc: Service) -> None:
    logged = [line.split("hardware: ", 1)[1] for line in svc.supervisor.log_text().splitlines() if "hardware: " in line]
    assert logged[0] == "GPU available: 2 GPU(s)" and "GPU 1 (cuda:1)" in logged
    assert "├─ used memory: 1.00 GB (4.2%)" in logged and "├─ model: Fake GPU B" in logged
    shown = rfuav(svc, "gpu", token=None)
    assert shown.code == 0, shown
    lines = shown.out.splitlines()
    # Nothing runs: the same text, then each GPU's utilisation.
    assert lines == [*logged, "cuda:0: utilization 90.0%", "cuda:1: utilization 5.0%"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent: run `make browser` (apt chromium)")
def test_the_dashboard_device_menus_offer_the_gpus_the_api_reports(svc: Service) -> None:
    from playwright.sync_api import sync_playwright

    reported = [d["device_name"] for d in svc.client.get_gpu_info()["devices"]]
    assert reported == ["cuda:0", "cuda:1"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(svc.base_url + "/")
            menus = page.locator("select[name=device][data-devices]")
            page.wait_for_function("document.querySelectorAll('select[name=device][data-devices]').length >= 2")
            for i in range(menus.count()):
                options = menus.nth(i).locator("option").all_inner_texts()
                assert options == ["cuda", "cpu", *reported]
            # A GPU of the menu is what a request sends.
            form = "#form-training"
            page.select_option(f"{form} select[name=device]", "cuda:1")
            assert page.input_value(f"{form} select[name=device]") == "cuda:1"
            assert errors == []
        finally:
            browser.close()
