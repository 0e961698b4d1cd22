"""A fake satellite platform: a real ``http.server`` on loopback in a thread that records every
multipart upload (file name and bytes, form fields, headers) and can fail the first N requests —
optionally misbehaving, with a reason phrase that quotes a request header (``echo_header``: the
token comes back in the status line, as some servers do)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Upload:
    headers: dict[str, str]
    fields: dict[str, str]
    files: dict[str, tuple[str, bytes]]  # field -> (filename, content)
    status: int


@dataclass
class Satellite:
    fail_first: int = 0
    fail_status: int = 500
    echo_header: str | None = None
    uploads: list[Upload] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                upload = owner._parse(dict(self.headers.items()), body)
                echoed = self.headers.get(owner.echo_header) if owner.echo_header else None
                if upload.status != 200 and echoed is not None:
                    self.send_response(upload.status, f"Rejected credentials {echoed}")
                else:
                    self.send_response(upload.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"code": 200}' if upload.status == 200 else b'{"code": 500}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/upload"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _parse(self, headers: dict[str, str], body: bytes) -> Upload:
        message = BytesParser(policy=default_policy).parsebytes(
            b"Content-Type: " + headers.get("Content-Type", "").encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            if filename is not None:
                files[str(name)] = (filename, payload)
            else:
                fields[str(name)] = payload.decode()
        with self._lock:
            status = self.fail_status if len(self.uploads) < self.fail_first else 200
            upload = Upload(headers, fields, files, status)
            self.uploads.append(upload)
        return upload

    def successful(self) -> list[Upload]:
        with self._lock:
            return [u for u in self.uploads if u.status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
