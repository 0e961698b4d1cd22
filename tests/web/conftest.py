"""Fixtures of the web tests: the whole service (real supervisor + real uvicorn) on loopback.

- ``api`` (module scope): one service whose CPU limits for training, inference and preprocessing
  are 0, so submitted tasks of those types stay ``pending`` (no torch work on a shared 2-core
  machine) and can be cancelled; diagnostic tasks run (cold start, no torch).
- ``make_service(**env)`` (function scope): a fresh service with other settings (a token, a
  small SSE queue, …); stopped at the end of the test, logs printed when the test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.service import Service

PENDING_ENV = {
    "RFUAV_LIMIT_CPU_TRAINING": "0",
    "RFUAV_LIMIT_CPU_INFERENCE": "0",
    "RFUAV_LIMIT_CPU_PREPROCESSING": "0",
    "RFUAV_GRACE_SECONDS": "2",
}


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)


def _dump(svc: Service) -> None:
    print(f"--- web log ---\n{svc.web_log_text()[-10000:]}")
    print(f"--- supervisor log ---\n{svc.supervisor.log_text()[-10000:]}")


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest) -> Iterator[Service]:
    svc = Service(env=PENDING_ENV).start()
    yield svc
    if request.session.testsfailed:
        _dump(svc)
    svc.close()


@pytest.fixture()
def make_service(request: pytest.FixtureRequest) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def make(**env: str) -> Service:
        svc = Service(env={"RFUAV_GRACE_SECONDS": "2", **env})
        started.append(svc)
        return svc.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for svc in started:
        if rep is not None and rep.failed:
            _dump(svc)
        svc.close()
