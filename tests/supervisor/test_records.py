"""Task records published for web's read view (``supervisor.records``): every committed change,
numbered without gaps, before the reply of the command that made it; heartbeats; the snapshot."""

from __future__ import annotations

from typing import Any

import orjson

from protocol import PROTOCOL_VERSION
from protocol.records import RECORDS_TOPIC, from_fields
from tests.support.supervisor import EventSubscriber, SupervisorProcess


def _messages(sub: EventSubscriber, until_rev: int) -> list[dict[str, Any]]:
    """Record messages up to the one that reaches ``until_rev`` (heartbeats included)."""
    out: list[dict[str, Any]] = []
    while not out or out[-1]["rev"] < until_rev:
        topic, message = sub.recv(timeout=30)
        assert topic.encode() == RECORDS_TOPIC
        out.append(message)
    return out


def test_every_change_is_published_in_order_before_the_reply(supervisor: SupervisorProcess) -> None:
    sub = supervisor.subscribe(RECORDS_TOPIC)
    first = sub.recv(timeout=30)[1]  # a heartbeat within a second: the position so far
    epoch, rev = first["epoch"], first["rev"]
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 0}})
    replies = [
        supervisor.request(
            orjson.dumps({
                "v": PROTOCOL_VERSION, "id": "r1", "kind": "submit",
                "tasks": [{"task_type": "diagnostic", "job": "diagnostic", "params": {"token": "s3cr3t"}}] * 2,
            })
        )
    ]  # fmt: skip
    a, b = (t["task_id"] for t in replies[0]["data"]["tasks"])
    for kind in ("cancel", "delete"):
        replies.append(
            supervisor.request(orjson.dumps({"v": PROTOCOL_VERSION, "id": kind, "kind": kind, "task_id": a}))
        )
    assert all(r["ok"] and r["at"][0] == epoch for r in replies)
    positions = [r["at"][1] for r in replies]
    assert rev < positions[0] < positions[1] < positions[2]
    messages = _messages(sub, positions[-1])
    assert all(m["epoch"] == epoch for m in messages)
    # Gap-free: each message's records are the changes right after the one before.
    for before, message in zip([first, *messages], messages):
        assert message["rev"] - len(message["records"]) == before["rev"]
    changes = [r for m in messages for r in m["records"]]
    assert len(changes) == positions[-1] - rev
    # The state of each task as of each reply is published at or before that reply's position.
    as_of = {p: [r for m in messages if m["rev"] <= p for r in m["records"]] for p in positions}
    assert {r["task_id"] for r in as_of[positions[0]]} == {a, b}
    assert [r for r in as_of[positions[1]] if r["task_id"] == a][-1]["status"] == "cancelled"
    assert as_of[positions[2]][-1] == {"task_id": a, "deleted": True}
    assert all(r.get("params", {}) == {} for r in changes)  # secrets never leave the supervisor
    assert sorted({r["ord"] for r in changes if "ord" in r}) == [1, 2]
    assert messages[-1]["counts"] == {"diagnostic": {"pending": 1}}
    # The published form makes the very body the supervisor answers.
    got = supervisor.call("get", task_id=b, record=True)
    ord_, record = from_fields(got["record"])
    assert ord_ == 2 and record.response(0.0) == {**got["task"], "duration": 0.0}
    assert [r for r in changes if r["task_id"] == b][-1] == got["record"]


def test_a_snapshot_holds_every_live_task_and_the_newest_others(supervisor: SupervisorProcess) -> None:
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 0}})
    live = supervisor.submit()
    ended = [supervisor.submit() for _ in range(4)]
    for tid in ended:
        supervisor.call("cancel", task_id=tid)
    snap = supervisor.call("view", limit=2)
    ids = {r["task_id"]: r["ord"] for r in snap["records"]}
    assert set(ids) == {live, *ended[-2:]}  # the oldest task is live: held below the window
    assert snap["floor"] == ids[ended[-2]] == 4
    assert snap["counts"] == {"diagnostic": {"pending": 1, "cancelled": 4}}
    everything = supervisor.call("view", limit=10)
    assert everything["floor"] == 0 and len(everything["records"]) == 5
    assert everything["rev"] == snap["rev"]
