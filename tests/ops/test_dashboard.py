"""The dashboard in a real headless Chromium (Debian's) against a really running service.

Start a training job from the form (a tiny digits dataset rendered as PNGs), watch the live log
and the charts fill, cancel it and see the status change; plus the token flow, the
preprocessing forms, and a task's page opened by clicking its id in the list. On two short
finished trainings (``trainings``): the charts' legends, integer epoch ticks and the values
under the mouse, the best epoch's confusion matrix and per-class table, the compare view
overlaying both, and one of them deployed from its row (the Deployments panel: live status and
figures, undeploy). Every page loads without a console error (the favicon included) and without a
JavaScript error. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.datasets import digits
from tests.support.service import Service
from tests.web.test_sse import http_requests, wait_until

from .conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
TOKEN = "dash-token"

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent: run `make browser` (apt chromium)"),
]


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    service = Service(env={"RFUAV_API_TOKEN": TOKEN, "RFUAV_GRACE_SECONDS": "3"}).start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def trainings(svc: Service) -> dict[str, Any]:
    """Two short trainings run to completion through the API (3 epochs each on 20 digits per
    class, other learning rates and seeds; both at once: the CPU takes two), and the size of
    their validation set."""
    data = digits(svc.home / "digits-cmp", per_class=12, size=16)
    ids = [
        svc.client.start_training(
            "resnet18", 10, str(data["train"]), str(data["val"]), str(svc.home / "models-cmp"), name=f"cmp{seed}",
            batch_size=8, num_epochs=3, learning_rate=lr, image_size=32, device="cpu", pretrained=False, seed=seed,
        )["task_id"]
        for seed, lr in ((1, 1e-3), (2, 3e-3))
    ]  # fmt: skip
    for task_id in ids:
        assert svc.client.wait_for(task_id, timeout=240)["status"] == "completed"
    return {"ids": ids, "val_size": len(list(data["val"].glob("*/*.png")))}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A browser page and what went wrong on it: console errors and uncaught JavaScript errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.js_errors: list[str] = []
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.js_errors.append(str(exc)))


@pytest.fixture()
def open_page(browser, svc: Service) -> Iterator[Callable[..., Watched]]:  # type: ignore[no-untyped-def]
    """``open_page(token=TOKEN)``: the dashboard loaded in a fresh browser context, as by a person
    who saved ``token`` earlier (None: never). The load is complete once the status panel and the
    task list are filled and the browser fetched the favicon."""
    opened: list[tuple[Any, Watched]] = []

    def open_(token: str | None = TOKEN) -> Watched:
        storage = {"cookies": [], "origins": [{"origin": svc.base_url,
                                               "localStorage": [{"name": "rfuav.token", "value": token}]}]}  # fmt: skip
        context = browser.new_context(
            viewport={"width": 1400, "height": 1200}, storage_state=storage if token else None
        )
        watched = Watched(context.new_page())
        opened.append((context, watched))
        icons = http_requests(svc, "favicon", 200)
        watched.page.goto(svc.base_url + "/")
        if token is not None:
            watched.page.wait_for_function("document.querySelector('#queue').textContent.includes('queued')")
            watched.page.wait_for_function("!document.querySelector('#gpu').textContent.startsWith('…')")
        wait_until(svc, lambda: http_requests(svc, "favicon", 200) > icons, 30, "the browser fetched the favicon")
        return watched

    yield open_
    for context, watched in opened:
        context.close()
        assert not watched.js_errors, f"JavaScript errors: {watched.js_errors}"


@pytest.fixture()
def page(open_page: Callable[..., Watched]) -> Any:
    """The dashboard of a person who saved the token before: it loads without a console error."""
    watched = open_page()
    assert watched.console_errors == [], watched.console_errors
    return watched.page


def login(page) -> None:  # type: ignore[no-untyped-def]
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#banner", state="hidden")


def test_token_is_required_then_remembered(open_page, svc: Service) -> None:  # type: ignore[no-untyped-def]
    watched = open_page(token=None)
    page = watched.page
    # No token yet: /api/v2 answers 401 and the page says what to do. The browser reports each
    # 401 in the console; nothing else may be there (a favicon 404 was, once).
    page.wait_for_selector("#banner:not([hidden])")
    assert watched.console_errors and all("status of 401" in e for e in watched.console_errors), watched.console_errors
    assert "API token" in page.inner_text("#banner")
    login(page)
    page.wait_for_function("document.querySelector('#queue').textContent.includes('queued')")
    assert page.evaluate("localStorage.getItem('rfuav.token')") == TOKEN
    # A reload keeps it: the status panel fills without asking again, and without an error.
    errors = len(watched.console_errors)
    page.reload()
    page.wait_for_function("document.querySelector('#queue').textContent.includes('queued')")
    assert page.is_hidden("#banner")
    assert watched.console_errors[errors:] == []
    assert page.inner_text("#health").startswith("healthy")
    gpu = svc.client.get_gpu_info()
    if gpu["available"]:
        assert page.locator("#gpu tbody tr").count() == gpu["count"]
    else:
        assert "No GPU" in page.inner_text("#gpu")
    # The model list comes from /api/v1/info.
    assert page.locator("#form-training select[name=model] option").count() > 50


def test_train_from_the_form_watch_log_and_charts_then_cancel(page, svc: Service) -> None:  # type: ignore[no-untyped-def]
    data = digits(svc.home / "digits", per_class=12, size=16)
    form = "#form-training"
    page.select_option(f"{form} select[name=model]", "resnet18")
    page.fill(f"{form} input[name=num_classes]", "10")
    page.fill(f"{form} input[name=train_path]", str(data["train"]))
    page.fill(f"{form} input[name=val_path]", str(data["val"]))
    page.fill(f"{form} input[name=save_path]", str(svc.home / "models"))
    page.fill(f"{form} input[name=name]", "dash")
    page.fill(f"{form} input[name=batch_size]", "8")
    page.fill(f"{form} input[name=num_epochs]", "200")
    page.fill(f"{form} input[name=image_size]", "32")
    page.select_option(f"{form} select[name=device]", "cpu")
    page.uncheck(f"{form} input[name=pretrained]")
    page.click(f"{form} button[type=submit]")

    page.wait_for_function("document.querySelector('#form-result').dataset.taskId")
    task_id = page.get_attribute("#form-result", "data-task-id")
    assert task_id
    task = svc.client.get_task(task_id)
    assert task["task_type"] == "training" and task["params"]["num_epochs"] == 200
    assert task["params"]["pretrained"] is False

    # The task panel opens on the new task (once the list is refreshed), and its row is in the list.
    page.wait_for_function(f"document.querySelector('#task-title').textContent === {task_id!r}")
    page.wait_for_selector(f"#tasks tr[data-task-id='{task_id}']")
    # Live: the log fills, and both charts get points (two epochs: train and val each).
    page.wait_for_function("document.querySelectorAll('#task-log li').length > 3", timeout=120_000)
    page.wait_for_function("Number(document.querySelector('#chart-step-loss').dataset.points) >= 2", timeout=120_000)
    page.wait_for_function("Number(document.querySelector('#chart-epoch-loss').dataset.points) >= 4", timeout=180_000)
    page.wait_for_function("Number(document.querySelector('#chart-epoch-acc').dataset.points) >= 4")
    assert page.inner_text("#task-status") == "running"
    assert legend(page, "#chart-epoch-loss") == ["epoch", "train_loss", "val_loss"]
    # The best epoch so far: its confusion matrix, 10 x 10.
    page.wait_for_selector("#class-report:not([hidden])")
    assert page.locator("#confusion td.cm").count() == 100
    # What the chart shows is what the service stored.
    stored = [e for e in svc.client.get_logs(task_id) if e.get("stage") == "epoch_end"]
    assert len(stored) >= 2
    log_text = page.inner_text("#task-log")
    assert stored[0]["message"] in log_text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-training.png"), full_page=True)

    page.click("#task-cancel")
    page.wait_for_function("document.querySelector('#task-status').textContent === 'cancelled'", timeout=60_000)
    page.wait_for_selector(f"#tasks tr[data-task-id='{task_id}'][data-status='cancelled']", timeout=30_000)
    assert svc.client.get_task(task_id)["status"] == "cancelled"
    assert page.locator(f"#tasks tr[data-task-id='{task_id}'] button.cancel").count() == 0
    page.wait_for_function("document.querySelector('#log-state').textContent === '(ended)'")
    page.screenshot(path=str(ARTIFACTS / "dashboard-cancelled.png"), full_page=True)


def test_preprocessing_form_and_refusal(page, svc: Service) -> None:  # type: ignore[no-untyped-def]
    data = digits(svc.home / "digits-pre", per_class=3, size=16)
    page.click(".tabs button[data-tab=split]")
    assert page.is_hidden("#form-training") and page.is_visible("#form-split")
    page.fill("#form-split input[name=input_path]", str(data["train"]))
    page.fill("#form-split input[name=output_path]", str(svc.home / "split-out"))
    page.click("#form-split button[type=submit]")
    page.wait_for_function("document.querySelector('#form-result').textContent.startsWith('started')")
    task_id = page.get_attribute("#form-result", "data-task-id")
    page.wait_for_function(
        f"document.querySelector('#tasks tr[data-task-id=\"{task_id}\"]')?.dataset.status === 'completed'",
        timeout=120_000,
    )
    assert (svc.home / "split-out" / "train").is_dir()
    page.wait_for_function("document.querySelector('#log-state').textContent === '(ended)'", timeout=60_000)

    # A refused request shows the service's message and starts nothing.
    page.click(".tabs button[data-tab=crop]")
    page.fill("#form-crop input[name=input_path]", "/etc")
    page.fill("#form-crop input[name=output_path]", str(svc.home / "crop-out"))
    page.fill("#form-crop input[name=width]", "4")
    page.fill("#form-crop input[name=height]", "4")
    before = len(svc.client.get_all_tasks()["preprocessing_tasks"])
    page.click("#form-crop button[type=submit]")
    page.wait_for_function("document.querySelector('#form-result').textContent.startsWith('refused')")
    assert "input_path" in page.inner_text("#form-result")
    assert len(svc.client.get_all_tasks()["preprocessing_tasks"]) == before
    shutil.rmtree(svc.home / "split-out", ignore_errors=True)


def test_click_a_task_id_to_open_its_page(open_page, svc: Service) -> None:  # type: ignore[no-untyped-def]
    first = svc.client.start_diagnostic(events=3)["task_id"]
    second = svc.client.start_diagnostic(events=7)["task_id"]
    for task_id in (first, second):
        assert svc.client.wait_for(task_id, timeout=60)["status"] == "completed"
    stored = svc.client.get_logs(second)
    watched = open_page()
    page = watched.page
    assert watched.console_errors == [], watched.console_errors
    assert page.is_hidden("#task-panel")
    # What a person does: find the task in the list and click its id.
    link = page.locator(f"#tasks tr[data-task-id='{second}'] td.id a")
    link.wait_for()
    assert link.inner_text() == second
    link.click()
    page.wait_for_function(f"document.querySelector('#task-title').textContent === {second!r}")
    page.wait_for_function("document.querySelector('#log-state').textContent === '(ended)'", timeout=30_000)
    assert page.inner_text("#task-status") == "completed"
    assert page.evaluate("location.hash") == f"#task={second}"
    assert page.locator("#task-log li").count() == len(stored)
    assert stored[-1]["message"] in page.inner_text("#task-log")
    assert page.locator(f"#tasks tr[data-task-id='{second}']").get_attribute("class") == "task selected"
    # Another id in the list: its page replaces this one.
    page.locator(f"#tasks tr[data-task-id='{first}'] td.id a").click()
    page.wait_for_function(f"document.querySelector('#task-title').textContent === {first!r}")
    page.wait_for_function("document.querySelector('#log-state').textContent === '(ended)'", timeout=30_000)
    assert page.locator("#task-log li").count() == len(svc.client.get_logs(first))
    # It is a page: back goes to the previous task, a reload stays on the task.
    page.go_back()
    page.wait_for_function(f"document.querySelector('#task-title').textContent === {second!r}")
    page.reload()
    page.wait_for_function(f"document.querySelector('#task-title').textContent === {second!r}")
    page.wait_for_function("document.querySelector('#log-state').textContent === '(ended)'", timeout=30_000)
    assert page.locator("#task-log li").count() == len(stored)
    assert watched.console_errors == [], watched.console_errors


def legend(page, chart: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The names in a chart's legend: the x axis, then each series."""
    return [t.strip() for t in page.locator(f"{chart} .u-legend .u-series .u-label").all_inner_texts()]


def legend_value(page, chart: str, index: int) -> str:  # type: ignore[no-untyped-def]
    """The value a chart's legend shows for its ``index``-th entry (0: x): ``--`` unless the
    mouse is over the plot."""
    return str(page.locator(f"{chart} .u-legend .u-series").nth(index).locator(".u-value").inner_text()).strip()


def hover(page, chart: str, fraction: float) -> None:  # type: ignore[no-untyped-def]
    """Move the mouse over a chart's plot, ``fraction`` of the way across, half-way down."""
    box = page.locator(f"{chart} .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)


def test_training_charts_legend_ticks_hover_and_class_report(open_page, svc: Service, trainings) -> None:  # type: ignore[no-untyped-def]
    task_id = trainings["ids"][0]
    ends = [e for e in svc.client.get_logs(task_id) if e.get("stage") == "epoch_end"]
    assert [e["epoch"] for e in ends] == [1, 2, 3]
    watched = open_page()
    page = watched.page
    page.locator(f"#tasks tr[data-task-id='{task_id}'] td.id a").click()
    page.wait_for_function("document.querySelector('#log-state').textContent === '(ended)'", timeout=30_000)
    page.wait_for_function("document.querySelector('#chart-epoch-loss').dataset.points === '6'")
    page.wait_for_function("document.querySelector('#chart-epoch-acc').dataset.points === '6'")
    page.wait_for_function("Number(document.querySelector('#chart-step-loss').dataset.points) >= 3")
    # A legend names every series (none drawn over the lines).
    assert legend(page, "#chart-epoch-loss") == ["epoch", "train_loss", "val_loss"]
    assert legend(page, "#chart-epoch-acc") == ["epoch", "train_acc", "val_acc"]
    assert legend(page, "#chart-step-loss") == ["step", "loss"]
    # Epochs are whole numbers on the x axis (the tick labels drawn on the canvas).
    assert page.get_attribute("#chart-epoch-loss", "data-x-ticks") == "1,2,3"
    assert page.get_attribute("#chart-epoch-acc", "data-x-ticks") == "1,2,3"
    steps = page.get_attribute("#chart-step-loss", "data-x-ticks").split(",")
    assert steps and all(t.isdigit() for t in steps), steps
    # The values under the mouse: none until it is over the plot, then epoch 2's (the middle).
    assert legend_value(page, "#chart-epoch-loss", 2) == "--"
    hover(page, "#chart-epoch-loss", 0.5)
    page.wait_for_function(
        "document.querySelectorAll('#chart-epoch-loss .u-legend .u-series .u-value')[2].textContent !== '--'"
    )
    assert legend_value(page, "#chart-epoch-loss", 0) == "2"
    assert float(legend_value(page, "#chart-epoch-loss", 1)) == pytest.approx(
        ends[1]["metrics"]["train_loss"], rel=1e-3
    )
    assert float(legend_value(page, "#chart-epoch-loss", 2)) == pytest.approx(ends[1]["metrics"]["val_loss"], rel=1e-3)
    hover(page, "#chart-epoch-acc", 0.95)
    page.wait_for_function("document.querySelectorAll('#chart-epoch-acc .u-legend .u-value')[0].textContent === '3'")
    assert float(legend_value(page, "#chart-epoch-acc", 2)) == pytest.approx(ends[2]["metrics"]["val_acc"], rel=1e-3)

    # The confusion matrix of the best epoch (the first with the highest val_acc), as stored.
    best = max(e["metrics"]["val_acc"] for e in ends)
    event = next(e for e in ends if e["metrics"]["val_acc"] == best)
    page.wait_for_selector("#class-report:not([hidden])")
    assert page.get_attribute("#confusion", "data-epoch") == str(event["epoch"])
    names = [str(i) for i in range(10)]
    assert page.locator("#confusion thead th[scope=col]").all_inner_texts() == names
    assert page.locator("#confusion tbody th[scope=row]").all_inner_texts() == names
    cells = [[int(t) for t in row.locator("td").all_inner_texts()] for row in page.locator("#confusion tbody tr").all()]
    assert cells == event["confusion"]
    assert sum(map(sum, cells)) == trainings["val_size"]
    # Per class: one row each, the stored figures.
    rows = page.locator("#per-class tbody tr")
    assert rows.count() == 10
    for i, name in enumerate(names):
        got = rows.nth(i).locator("td").all_inner_texts()
        m = event["per_class"][name]
        assert got == [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-charts.png"), full_page=True)
    assert watched.console_errors == [], watched.console_errors


def test_compare_two_trainings(open_page, svc: Service, trainings) -> None:  # type: ignore[no-untyped-def]
    first, second = trainings["ids"]
    watched = open_page()
    page = watched.page
    assert page.is_disabled("#compare")
    # Only trainings can be ticked.
    tasks = svc.client.get_all_tasks()
    page.wait_for_function("document.querySelector('#compare-hint').textContent.startsWith('tick two')")
    others = sum(len(group) for key, group in tasks.items() if key.endswith("_tasks") and key != "training_tasks")
    page.wait_for_selector(f"#tasks tr[data-task-id='{second}'] input.compare-pick")
    assert page.locator("#tasks tr.task:not(:has(input.compare-pick))").count() == others
    for task_id in (first, second):
        page.locator(f"#tasks tr[data-task-id='{task_id}'] input.compare-pick").check()
    assert page.is_hidden("#task-panel")  # a tick is not a click on the task
    assert page.inner_text("#compare-hint") == "2 of at most 4 trainings ticked"
    page.click("#compare")
    for chart in ("#compare-val-acc", "#compare-val-loss"):
        page.wait_for_function(f"document.querySelector('{chart}').dataset.points === '6'")
        assert legend(page, chart) == ["epoch", f"{first} (cmp1)", f"{second} (cmp2)"]  # id (name)
        assert page.get_attribute(chart, "data-x-ticks") == "1,2,3"
    assert page.inner_text("#compare-tasks") == f"{first}, {second}"
    # Hover: both trainings' val_acc at the last epoch, as each stored it.
    hover(page, "#compare-val-acc", 0.95)
    page.wait_for_function("document.querySelectorAll('#compare-val-acc .u-legend .u-value')[0].textContent === '3'")
    for i, task_id in enumerate((first, second), 1):
        last = [e for e in svc.client.get_logs(task_id) if e.get("stage") == "epoch_end"][-1]["metrics"]
        assert float(legend_value(page, "#compare-val-acc", i)) == pytest.approx(last["val_acc"], rel=1e-3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"), full_page=True)
    # Unticking one leaves too few to compare.
    page.locator(f"#tasks tr[data-task-id='{second}'] input.compare-pick").uncheck()
    assert page.is_disabled("#compare")
    assert watched.console_errors == [], watched.console_errors


def test_deploy_a_training_watch_it_serve_then_undeploy(page, svc: Service, trainings) -> None:  # type: ignore[no-untyped-def]
    """The Deployments panel (web/static/dashboard/serving.js): Deploy on a completed training's
    row, the row's live status, replicas and figures, a name refused, Undeploy (confirmed)."""
    task_id = trainings["ids"][0]
    row = f"#tasks tr[data-task-id='{task_id}']"
    page.wait_for_selector(f"{row} button.deploy")
    # Only completed trainings can be deployed.
    completed = {t["task_id"] for t in svc.client.iter_tasks(status="completed", task_type="training")}
    deployable = page.eval_on_selector_all("#tasks tr:has(button.deploy)", "rows => rows.map(r => r.dataset.taskId)")
    assert set(deployable) == completed and task_id in completed
    assert page.is_visible("#deployments-empty")
    # A name no URL can carry is refused at once; then a good one.
    page.once("dialog", lambda d: d.accept("bad name"))
    page.click(f"{row} button.deploy")
    page.wait_for_function("document.querySelector('#serving-result').textContent.includes('no deployment name')")
    assert svc.client.deployments() == []
    page.once("dialog", lambda d: d.accept("digits-1"))
    page.click(f"{row} button.deploy")
    dep_row = "#deployments tr[data-name='digits-1']"
    page.wait_for_selector(dep_row)
    dep = svc.client.deployment("digits-1")
    training = svc.client.get_task(task_id)
    assert dep["device"] == training["device"] == "cpu"
    assert dep["model"]["model"] == "resnet18" and dep["model"]["num_classes"] == 10
    assert dep["model"]["weight_path"].endswith("best.pth")

    def cells() -> dict[str, str]:
        return dict(
            page.eval_on_selector_all(f"{dep_row} td[data-key]", "tds => tds.map(t => [t.dataset.key, t.textContent])")
        )

    page.wait_for_function(f"document.querySelector(\"{dep_row}\").dataset.status === 'ready'", timeout=120_000)
    shown = cells()
    assert shown["status"] == "ready" and shown["version"] == "v1" and shown["device"] == "cpu"
    assert shown["replicas"] == "1/1" and shown["restarts"] == "0" and shown["task"] == dep["task_id"]
    assert page.is_hidden("#deployments-empty")
    # The same name again, from the training's own page: the service's refusal is shown.
    page.locator(f"{row} td.id a").click()
    page.wait_for_selector("#task-deploy:not([hidden])")
    page.once("dialog", lambda d: d.accept("digits-1"))
    page.click("#task-deploy")
    page.wait_for_function("document.querySelector('#serving-result').textContent.startsWith('deploy refused')")
    # Live figures: requests through the API show up as req/s, p99 and the count.
    images = sorted((svc.home / "digits-cmp" / "val").glob("*/*.png"))[:12]
    for image in images:
        assert svc.client.predict("digits-1", raw=image.read_bytes())["model"] == "digits-1"
    page.wait_for_function(
        f"""(() => {{
          const td = (k) => document.querySelector("{dep_row} td[data-key=" + k + "]").textContent;
          return parseFloat(td('rps')) > 0 && td('p99').endsWith(' ms') && parseInt(td('requests')) >= {len(images)};
        }})()""",
        timeout=30_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-serving.png"), full_page=True)
    # Undeploy asks first: dismissed, nothing happens; confirmed, the row goes.
    page.once("dialog", lambda d: d.dismiss())
    page.click(f"{dep_row} button.undeploy")
    assert svc.client.deployment("digits-1")["status"] == "ready"
    assert http_requests(svc, "undeploy", 200) == 0
    page.once("dialog", lambda d: d.accept())
    page.click(f"{dep_row} button.undeploy")
    page.wait_for_selector(dep_row, state="detached")
    assert http_requests(svc, "undeploy", 200) == 1
    assert page.inner_text("#serving-result") == "digits-1: stopped"
    assert page.is_visible("#deployments-empty")
    assert svc.client.wait_for(dep["task_id"], timeout=30)["status"] == "completed"
