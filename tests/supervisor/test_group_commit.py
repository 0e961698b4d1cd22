"""Control requests that arrive together share one commit (``Control.handle_all``), and each is
still answered as if alone: in-process with the lifecycle rig's real Store, Scheduler and
Pipeline, and the real ``Records`` publishing each commit; then over the daemon's real socket.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from protocol import PROTOCOL_VERSION
from protocol.records import RECORDS_TOPIC
from protocol.tasks import TaskRecord
from supervisor.control import Control
from supervisor.records import Records
from tests.supervisor.lifecycle_rig import Rig
from tests.support.supervisor import SupervisorProcess

pytestmark = pytest.mark.timeout(60)


class _Service:
    """What submit, get and cancel need of the daemon, over the rig."""

    def __init__(self, rig: Rig) -> None:
        self.rig, self.store, self.scheduler = rig, rig.store, rig.scheduler
        self.settings = dataclasses.replace(rig.settings, diagnostic=True)

    def live_task(self, task_id: str) -> TaskRecord | None:
        return self.rig.tasks.get(task_id)

    def enqueue(self, tasks: list[TaskRecord]) -> None:
        self.rig.lifecycle.enqueue(tasks)

    def cancel(self, task_id: str, reason: str) -> None:
        self.rig.lifecycle.cancel(task_id, reason)


def _request(request_id: str, kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": PROTOCOL_VERSION, "id": request_id, "kind": kind, **fields})


def _submit(request_id: str, *task_ids: str) -> bytes:
    return _request(
        request_id, "submit", tasks=[{"task_type": "diagnostic", "job": "diagnostic", "task_id": t} for t in task_ids]
    )


@pytest.mark.asyncio
async def test_requests_answered_together_share_one_commit(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.scheduler.set_limits({"cpu": {"diagnostic": 0}})  # everything stays queued
    published: list[dict[str, Any]] = []
    records = Records()
    records.attach(rig.store, lambda out: published.extend(orjson.loads(m) for _, m in out), rig.tasks.get)
    control = Control(_Service(rig), records)  # type: ignore[arg-type]
    control.handle(_submit("r0", "old"))
    published.clear()
    commits: list[int] = []
    on_commit = rig.store.on_commit
    assert on_commit is not None
    rig.store.on_commit = lambda changes: (commits.append(len(changes)), on_commit(changes))  # type: ignore[func-returns-value]

    replies = [
        orjson.loads(r)
        for r in control.handle_all([
            _submit("a", "a1", "a2"),
            _submit("dup", "b1", "old"),  # "old" exists: the whole submit is refused, b1 too
            _request("bad", "get", task_id=5),
            _request("cancel", "cancel", task_id="a1"),
            _submit("c", "c1"),
        ])
    ]  # fmt: skip

    assert [r["id"] for r in replies] == ["a", "dup", "bad", "cancel", "c"], replies
    assert [r["ok"] for r in replies] == [True, False, False, True, True], replies
    assert replies[1]["error"]["code"] == "conflict" and replies[2]["error"]["code"] == "bad_request"
    assert commits == [3]  # a1, a2 and c1 in one commit (b1 never written)
    assert [m["rev"] for m in published] == [records.rev] and len(published[0]["records"]) == 3
    # Every reply stands at the position that includes all of the group's changes.
    assert {tuple(r["at"]) for r in replies} == {(records.epoch, records.rev)}
    assert {t.task_id: t.status for t in map(rig.store.get_task, ["a1", "a2", "c1"]) if t} == {
        "a1": "cancelled", "a2": "pending", "c1": "pending"
    }  # fmt: skip
    assert rig.store.get_task("b1") is None


@pytest.mark.asyncio
async def test_a_group_whose_transaction_the_disk_refuses_stores_queues_and_starts_nothing(tmp_path: Path) -> None:
    """One request of a group fills the disk (SQLite's page limit here): SQLite rolls back the
    group's whole transaction, the submit before it included. Every request of the group is
    answered with the error (unavailable: try again); the earlier submit's task is neither stored nor queued nor started
    (its queueing is undone; tasks start only once committed). With room again, it is accepted."""
    rig = Rig(tmp_path)  # room to start at once: nothing may start before the commit
    control = Control(_Service(rig))  # type: ignore[arg-type]
    pages = rig.store._db.execute("PRAGMA page_count").fetchone()[0]
    rig.store._db.execute(f"PRAGMA max_page_count = {pages}")
    group = [_submit("a", "a1"), _submit("big", *(f"b{i}" for i in range(400)))]
    replies = [orjson.loads(r) for r in control.handle_all(group)]
    assert [(r["ok"], r["error"]["code"]) for r in replies] == [(False, "unavailable")] * 2, replies
    assert all("disk refuses writes (TransactionLost" in r["error"]["message"] for r in replies)
    assert rig.store.get_task("a1") is None and rig.store.counts() == {}
    assert "a1" not in rig.tasks and rig.scheduler.queue_length == 0
    assert rig.executor.specs == {} and rig.lifecycle.running == {}
    rig.store._db.execute("PRAGMA max_page_count = 1073741823")
    assert orjson.loads(control.handle_all([_submit("again", "a1")])[0])["ok"]
    await rig.started("a1")


def test_a_conflicting_insert_undoes_only_its_own_rows(tmp_path: Path) -> None:
    """``Store.insert_tasks`` inside a larger transaction: the conflict takes back its inserts
    (a savepoint), not what the transaction held before it."""
    rig = Rig(tmp_path)
    store = rig.store
    for task_id in ("x", "y", "z"):
        rig.record(task_id)
    template = rig.record("w")
    with store.batch():
        store.insert_tasks([dataclasses.replace(template, task_id="kept")])
        with pytest.raises(sqlite3.IntegrityError):
            store.insert_tasks([dataclasses.replace(template, task_id=t) for t in ("gone", "x")])
        store.insert_tasks([dataclasses.replace(template, task_id="after")])
    assert store.get_task("kept") is not None and store.get_task("after") is not None
    assert store.get_task("gone") is None
    assert store.counts() == {"diagnostic": {"pending": 6}}
    assert [ord_ for ord_, _ in store.list_tasks(limit=10)] == [6, 5, 4, 3, 2, 1]


def test_requests_sent_at_once_over_several_sockets_are_each_answered(supervisor: SupervisorProcess) -> None:
    """Many requests queued at once (several clients, none waiting for its answer): each gets
    its own reply, what each submit stored is there, the conflicts refuse only themselves, and
    every reply's position covers its own change (read your writes)."""
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 0}})
    sub = supervisor.subscribe(RECORDS_TOPIC)
    ctx = zmq.Context.instance()
    clients = [ctx.socket(zmq.DEALER) for _ in range(4)]
    try:
        for sock in clients:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(supervisor.settings.addresses.control)
        for n in range(50):
            for c, sock in enumerate(clients):
                # Client 3 asks for client 0's ids: those that client 0 stored first conflict.
                task_id = f"t{n}-{0 if c == 3 else c}"
                sock.send(_submit(f"{c}/{n}", task_id))
        replies: dict[str, dict[str, Any]] = {}
        poller = zmq.Poller()
        for sock in clients:
            poller.register(sock, zmq.POLLIN)
        while len(replies) < 200:
            ready = dict(poller.poll(30_000))
            assert ready, f"only {len(replies)} of 200 replies"
            for sock in ready:
                reply = orjson.loads(sock.recv())
                replies[reply["id"]] = reply
    finally:
        for sock in clients:
            sock.close()
    for n in range(50):
        first, second = replies[f"0/{n}"], replies[f"3/{n}"]
        assert [first["ok"], second["ok"]].count(True) == 1, (first, second)  # one of them stored t{n}-0
        assert all(replies[f"{c}/{n}"]["ok"] for c in (1, 2))
    stored = {t["task_id"] for t in supervisor.stored_tasks()}
    assert stored == {f"t{n}-{c}" for n in range(50) for c in range(3)}
    # Each stored task's record was published at or before the position its reply carries.
    published: dict[str, int] = {}
    last = max(r["at"][1] for r in replies.values())
    while not published or max(published.values()) < last:
        _, message = sub.recv(timeout=30)
        for record in message["records"]:
            published.setdefault(record["task_id"], message["rev"])
    for reply in replies.values():
        if reply["ok"]:
            (task,) = reply["data"]["tasks"]
            assert published[task["task_id"]] <= reply["at"][1]
