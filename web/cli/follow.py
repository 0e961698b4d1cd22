"""Following a task's log live (``logs -f``, ``--follow``): print each event once, in order.

``RFUAVClient.stream_events`` resumes after a dropped connection by itself (``Last-Event-ID``);
when it gives up (the service stayed away) ``follow`` starts it again after the last event
printed, for up to ``RECONNECT_FOR`` seconds, so a restart of the web front end loses nothing.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from protocol.events import is_final
from protocol.tasks import FINAL_STATUSES
from web.cli.render import ProgressBar, log_line
from web.client import RFUAVClient, RFUAVError

#: How long ``follow`` keeps trying to reconnect to a service that went away.
RECONNECT_FOR = 60.0
#: Seconds between two attempts.
_BACKOFF = 1.0


def follow(client: RFUAVClient, task_id: str, as_json: bool) -> dict[str, Any]:
    """Print the task's events as they come (the bar on stderr, on a terminal) until it ends;
    its final status event, or its record when the stream ended without one in view.

    Raises ``RFUAVError`` for an API refusal, or when the service stayed away too long.
    """
    bar = ProgressBar(sys.stderr)
    last_seq = 0
    final: dict[str, Any] | None = None
    deadline = time.monotonic() + RECONNECT_FOR
    while final is None:
        try:
            for event in client.stream_events(task_id, last_event_id=last_seq or None):
                deadline = time.monotonic() + RECONNECT_FOR
                seq = event.get("seq")
                if isinstance(seq, int):
                    if seq <= last_seq:
                        continue  # already printed before a reconnect
                    last_seq = seq
                bar.clear()
                print(json.dumps(event, sort_keys=True) if as_json else log_line(event), flush=True)
                bar.update(event)
                bar.draw()
                if is_final(event):
                    final = event
            if final is None:
                # The stream ended without a final event in view: the task says how it ended.
                task = client.get_task(task_id)
                if task["status"] in FINAL_STATUSES:
                    final = task
        except RFUAVError as exc:
            bar.clear()
            if exc.code not in (0, 503) or time.monotonic() > deadline:
                raise
            print(f"rfuav: stream interrupted ({exc.msg}); resuming after event {last_seq}", file=sys.stderr)
            time.sleep(_BACKOFF)  # back off before reconnecting
    bar.clear()
    return final
