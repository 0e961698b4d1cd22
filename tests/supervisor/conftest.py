"""Fixtures: a real supervisor daemon per test (see ``tests.support.supervisor``).

``supervisor`` starts jobs cold (a diagnostic job then needs no torch, which keeps these tests
light on a shared 2-core machine) with a 2 s grace period; ``make_supervisor(**env)`` starts one
with other settings (e.g. ``RFUAV_JOB_MEMORY_MB``, ``RFUAV_START_MODE=warm``).

On a host where job cgroups can be made (``tests.support.cgroups.why_no_cgroups()`` is None),
every task any of these daemons started must have run with its limits enforced in job cgroups
of its own: checked from the store after each test
(``tests.support.cgroups.assert_every_task_was_confined``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.cgroups import assert_every_task_was_confined
from tests.support.supervisor import SupervisorProcess

BASE_ENV = {"RFUAV_START_MODE": "cold", "RFUAV_GRACE_SECONDS": "2"}


@pytest.fixture()
def make_supervisor(request: pytest.FixtureRequest) -> Iterator[Callable[..., SupervisorProcess]]:
    started: list[SupervisorProcess] = []

    def make(**env: str) -> SupervisorProcess:
        sup = SupervisorProcess(env={**BASE_ENV, **env})
        started.append(sup)
        return sup.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    try:
        for sup in started:
            assert_every_task_was_confined(sup)
    except AssertionError:
        failed = True
        raise
    finally:
        for sup in started:
            if failed:
                print(f"--- supervisor log ({sup.home}) ---\n{sup.log_text()[-20000:]}")
            sup.close()


@pytest.fixture()
def supervisor(make_supervisor: Callable[..., SupervisorProcess]) -> SupervisorProcess:
    return make_supervisor()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Remember the call phase's report so the fixture can print the daemon's log on failure.
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
