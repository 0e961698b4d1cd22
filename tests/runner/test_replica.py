"""Serving replicas (``runner.serving``) in real processes (``python -m runner spec.json``), talked
to with a ZeroMQ DEALER over the wire of ``protocol.serving``: readiness, every input form against
the inference job's own preprocessing and a plain forward of the same weights, dynamic batching,
the cache, every refusal naming its field, decompression bombs, a full queue, the SIGTERM drain
and a load failure.

Three replicas start at once when the module starts (two cores: their imports overlap):
``main`` (most tests), ``small`` (tiny queue and pixel limit; the drain test ends it, last in
the file) and ``broken`` (weights of another architecture: it must exit 1).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from protocol import serving as sv
from runner import datasets, models
from tests.support.models import write_model
from tests.support.replicas import ReplicaProcess

CLASSES = ("a", "b", "c")
SIZE = 32
MAIN: dict[str, Any] = {"max_batch_size": 8, "max_batch_delay_ms": 50.0, "max_queue": 64, "cache_size": 64, "top_k": 2}
SMALL: dict[str, Any] = {"max_batch_size": 2, "max_batch_delay_ms": 0.0, "max_queue": 2, "cache_size": 0,
         "max_image_pixels": 1000, "drain_idle_seconds": 3.0}  # fmt: skip
pytestmark = pytest.mark.timeout(120)


def js(obj: Any) -> bytes:
    """JSON as a client writes it (Python's json: NaN and Infinity where asked)."""
    return json.dumps(obj).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data root and its images: RGB PNG and JPEG (not square, not 32 px), a gray PNG."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 48, dtype=np.float64)[None, :, None]
    rgb = np.clip(rng.normal(0, 40, (40, 48, 3)) + ramp * np.array([1.0, 0.4, 0.1]), 0, 255).astype(np.uint8)
    return {
        "root": root,
        "png": _png(root / "rgb.png", rgb),
        "jpeg": _png(root / "rgb.jpg", rgb[::-1]),
        "gray": _png(root / "gray.png", rng.integers(0, 256, (30, 36), dtype=np.uint8)),
        "other": _png(root / "other.png", rgb[:, ::-1]),
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[dict[str, ReplicaProcess]]:
    root = tmp_path_factory.mktemp("serving")
    cfg, weights = write_model(root / "model", image_size=SIZE, class_names=CLASSES)
    _, other_weights = write_model(root / "squeeze", model="squeezenet1_1", image_size=SIZE, class_names=CLASSES)
    replicas: dict[str, ReplicaProcess] = {}
    try:
        replicas["main"] = ReplicaProcess(root / "main", cfg, weights, [files["root"]], **MAIN)
        # A dead replica's socket file where the small one binds: binding over it must work.
        replicas["small"] = ReplicaProcess(root / "small", cfg, weights, [files["root"]], stale_socket=True, **SMALL)
        replicas["broken"] = ReplicaProcess(root / "broken", cfg, other_weights, [files["root"]])
        yield replicas
    finally:
        for replica in replicas.values():
            replica.close()


@pytest.fixture(scope="module")
def main(fleet: dict[str, ReplicaProcess]) -> ReplicaProcess:
    fleet["main"].ready()
    return fleet["main"]


@pytest.fixture(scope="module")
def small(fleet: dict[str, ReplicaProcess]) -> ReplicaProcess:
    fleet["small"].ready()
    return fleet["small"]


@pytest.fixture(scope="module")
def plain(fleet: dict[str, ReplicaProcess]) -> Any:
    """The same weights, plain ``model.eval()`` (no folding, no channels-last): a tensor's
    probabilities, and an image file's through the inference job's decode and transform."""
    model = models.build("resnet18", len(CLASSES))
    state = models.state_of(torch.load(fleet["main"].weights, weights_only=True))
    models.load_state(model, state, what="best.pth")
    model.eval()
    transform = datasets.transforms(SIZE, mean=datasets.MEAN, std=datasets.STD)

    class Plain:
        @staticmethod
        def tensor(path: Path) -> torch.Tensor:
            out: torch.Tensor = transform(image=datasets.read_rgb(path))["image"]
            return out

        @staticmethod
        def probs(x: torch.Tensor) -> list[float]:
            with torch.inference_mode():
                out: list[float] = torch.softmax(model(x.unsqueeze(0)), 1)[0].tolist()
            return out

        @classmethod
        def of_file(cls, path: Path) -> list[float]:
            return cls.probs(cls.tensor(path))

    return Plain


def assert_answer(answer: dict[str, Any], want: list[float], what: str) -> None:
    got = answer["prediction"]
    assert len(got) == len(CLASSES) and all(isinstance(p, float) for p in got), what
    assert np.allclose(got, want, rtol=0, atol=1e-5), f"{what}: {got} != {want}"
    top = int(np.argmax(want))
    assert answer["top_class"] == top and answer["class_name"] == CLASSES[top], what
    assert [t["class"] for t in answer["top_k"]] == list(np.argsort(want)[::-1][:2]), what
    assert answer["top_k"][0] == {"class": top, "name": CLASSES[top], "probability": got[top]}, what
    assert 1 <= answer["batch_size"] <= MAIN["max_batch_size"] and answer["latency_ms"] > 0, what


def test_status_answers_once_loaded(main: ReplicaProcess) -> None:
    status = sv.as_status(main.ready())
    assert (status.name, status.version, status.pid, status.device) == ("uav", 3, main.proc.pid, "cpu")
    assert status.state == "ready" and "conv+bn fused" in status.prepared
    assert status.stats.queued == 0 and main.proc.poll() is None
    assert "ready on ipc://" in (main.task_dir / "stdout.log").read_text()


def test_every_form_gives_the_inference_probabilities(main: ReplicaProcess, files: dict[str, Path], plain: Any) -> None:
    png, jpeg, gray = files["png"], files["jpeg"], files["gray"]
    want = {name: plain.of_file(files[name]) for name in ("png", "jpeg", "gray")}
    tensor = plain.tensor(png)
    gray_pixels = cv2.imread(str(gray), cv2.IMREAD_UNCHANGED)
    assert gray_pixels is not None and gray_pixels.shape == (30, 36)
    c = main.client
    singles = {
        "raw png": (c.send(sv.OP_PREDICT, png.read_bytes(), b"Image/PNG; charset=binary"), "png"),
        "raw jpeg": (c.send(sv.OP_PREDICT, jpeg.read_bytes(), b"image/jpeg"), "jpeg"),
        "image_base64": (c.send(sv.OP_PREDICT, js({"image_base64": b64(png.read_bytes())})), "png"),
        "path": (c.send(sv.OP_PREDICT, js({"path": str(png)})), "png"),
        "image rgb": (c.send(sv.OP_PREDICT, js({"image": datasets.read_rgb(png).tolist()})), "png"),
        "image gray": (c.send(sv.OP_PREDICT, js({"image": gray_pixels.tolist()})), "gray"),
        "input": (c.send(sv.OP_PREDICT, js({"input": tensor.tolist()})), "png"),
    }  # fmt: skip
    batches = {
        "images_base64": (c.send(sv.OP_PREDICT_BATCH, js({"images_base64": [b64(jpeg.read_bytes()), b64(png.read_bytes())]})), ["jpeg", "png"]),
        "paths": (c.send(sv.OP_PREDICT_BATCH, js({"paths": [str(gray), str(jpeg), str(png)]})), ["gray", "jpeg", "png"]),
        "images": (c.send(sv.OP_PREDICT_BATCH, js({"images": [datasets.read_rgb(jpeg).tolist()]})), ["jpeg"]),
        "batch_inputs": (c.send(sv.OP_PREDICT_BATCH, js({"batch_inputs": [plain.tensor(gray).tolist(), tensor.tolist()]})), ["gray", "png"]),
    }  # fmt: skip
    article = c.send(sv.OP_ARTICLE_PREDICT, js({"input": plain.tensor(jpeg).tolist()}))
    article_batch = c.send(sv.OP_ARTICLE_BATCH, js({"batch_inputs": [tensor.tolist(), plain.tensor(gray).tolist()]}))
    for what, (rid, name) in singles.items():
        code, answer = c.wait(rid)
        assert code == 200, (what, answer)
        assert_answer(answer, want[name], what)
        assert answer["model"] == "uav" and answer["version"] == 3 and answer["cached"] is False
    for what, (rid, names) in batches.items():
        code, answer = c.wait(rid)
        assert code == 200, (what, answer)
        assert set(answer) == {"results", "model", "version"} and (answer["model"], answer["version"]) == ("uav", 3)
        assert len(answer["results"]) == len(names), what
        for result, name in zip(answer["results"], names):
            assert "model" not in result and result["cached"] is False
            assert_answer(result, want[name], f"{what}: {name}")
    code, answer = c.wait(article)
    assert code == 200 and set(answer) == {"prediction"} and len(answer["prediction"]) == 1, answer
    assert np.allclose(answer["prediction"][0], want["jpeg"], rtol=0, atol=1e-5)
    code, answer = c.wait(article_batch)
    assert code == 200 and set(answer) == {"results"}, answer
    assert np.allclose(answer["results"], [want["png"], want["gray"]], rtol=0, atol=1e-5)


def test_concurrent_requests_share_forward_passes(main: ReplicaProcess, plain: Any) -> None:
    before = main.client.status()["stats"]
    xs = [torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + i)) for i in range(12)]
    good = [main.client.send(sv.OP_PREDICT, js({"input": x.tolist()})) for x in xs[:6]]
    bad = [main.client.send(sv.OP_PREDICT, js({"input": [[[0.0]]]})), main.client.send(sv.OP_PREDICT, b"{")]
    good += [main.client.send(sv.OP_PREDICT, js({"input": x.tolist()})) for x in xs[6:]]
    sizes = []
    for rid, x in zip(good, xs):
        code, answer = main.client.wait(rid)
        assert code == 200, answer
        assert_answer(answer, plain.probs(x), "input")
        sizes.append(answer["batch_size"])
    assert [main.client.wait(rid)[0] for rid in bad] == [400, 400]
    assert max(sizes) > 1, sizes
    after = main.client.status()["stats"]
    delta = {k: after[k] - before[k] for k in ("requests", "errors", "batched_items", "batches")}
    assert delta == {"requests": 14, "errors": 2, "batched_items": 12, "batches": delta["batches"]}, delta
    assert 2 <= delta["batches"] <= 11
    assert after["by_status"].get("400", 0) - before["by_status"].get("400", 0) == 2
    assert sum(after["batch_size"]) - sum(before["batch_size"]) == delta["batches"]
    assert sum(after["latency_ms"]) - sum(before["latency_ms"]) == 14
    assert sum(after["queue_wait_ms"]) - sum(before["queue_wait_ms"]) == 12


def test_a_repeated_body_is_answered_from_the_cache(main: ReplicaProcess, files: dict[str, Path]) -> None:
    body = js({"image_base64": b64(files["other"].read_bytes())})
    hits = main.client.status()["stats"]["cache_hits"]
    code, first = main.client.call(sv.OP_PREDICT, body)
    assert code == 200 and first["cached"] is False, first
    code, again = main.client.call(sv.OP_PREDICT, body)
    assert code == 200 and again["cached"] is True, again
    assert again["prediction"] == first["prediction"] and again["top_k"] == first["top_k"]
    assert again["latency_ms"] < 40  # no batch delay (50 ms) for an answer already known
    code, other_op = main.client.call(sv.OP_PREDICT_BATCH, js({"images_base64": [b64(files["other"].read_bytes())]}))
    assert code == 200 and other_op["results"][0]["cached"] is False  # another op: another key
    assert main.client.status()["stats"]["cache_hits"] == hits + 1


def _bad_cases(files: dict[str, Path]) -> list[tuple[bytes, bytes, bytes, str]]:
    """(op, content type, body, what the 400's message must contain)."""
    ok = np.zeros((3, SIZE, SIZE)).tolist()
    nan = np.zeros((3, SIZE, SIZE))
    nan[1, 2, 3] = np.nan
    inf = np.zeros((3, SIZE, SIZE))
    inf[0, 0, 0] = np.inf
    png = files["png"].read_bytes()
    p, pb, j = sv.OP_PREDICT, sv.OP_PREDICT_BATCH, b"application/json"
    return [
        (p, j, js({"input": np.zeros((3, 31, 32)).tolist()}), "input: expected shape (3, 32, 32), got (3, 31, 32)"),
        (p, j, js({"input": nan.tolist()}), "input: NaN or infinity"),
        (p, j, js({"input": inf.tolist()}), "input: NaN or infinity"),
        (p, j, js({"input": "abc"}), "input: values must be numbers"),
        (p, j, js({"input": [[[1.0, 2.0], [3.0]]]}), "input: not a rectangular array"),
        (p, j, js({"image": [[0, 300], [1, 2]]}), "image: values must be integers 0-255"),
        (p, j, js({"image": [[0, -1], [1, 2]]}), "image: values must be integers 0-255"),
        (p, j, js({"image": [[0, 1.5], [1, 2]]}), "image: values must be integers 0-255"),
        (p, j, js({"image": np.zeros((4, 4, 4), dtype=int).tolist()}), "image: expected shape (H, W, 3) or (H, W), got (4, 4, 4)"),
        (p, j, js({"image_base64": "%%% not base64"}), "image_base64: not valid base64"),
        (p, j, js({"image_base64": b64(b"hello, not an image")}), "image_base64: bytes are not a PNG or JPEG image"),
        (p, j, js({"image_base64": b64(png[: len(png) // 2])}), "image_base64: cannot decode the image"),
        (p, b"image/png", b"GIF89a not a png", "body: bytes are not a PNG or JPEG image"),
        (p, b"image/gif", b"GIF89a", "body: content type image/gif is not supported"),
        (p, j, js({"path": "/etc/hostname"}), "path: /etc/hostname is outside the data roots"),
        (p, j, js({"path": str(files["root"] / "missing.png")}), "missing.png does not exist"),
        (p, j, js({"path": str(files["root"])}), "is not a file"),
        (p, j, js({"input": ok, "colour": 1, "size": 2}), "body: unknown field(s) 'colour', 'size'"),
        (p, j, js({"input": ok, "path": str(files["png"])}), "body: exactly one of input, image, image_base64, path"),
        (p, j, js({}), "body: exactly one of input, image, image_base64, path"),
        (p, j, b"{not json", "body: not valid JSON"),
        (p, j, b"[1, 2]", "body: expected a JSON object, got a list"),
        (pb, j, js({"batch_inputs": []}), "batch_inputs: empty"),
        (pb, j, js({"batch_inputs": [0] * 65}), "batch_inputs: at most 64 items, got 65"),
        (pb, j, js({"batch_inputs": ok}), "batch_inputs[0]: expected shape (3, 32, 32), got (32, 32)"),
        (pb, j, js({"images_base64": [b64(png)] * 3 + ["%%%"]}), "images_base64[3]: not valid base64"),
        (pb, j, js({"paths": [str(files["png"]), "/etc/passwd"]}), "paths[1]: /etc/passwd is outside the data roots"),
        (pb, j, js({"batch_inputs": 5}), "batch_inputs: expected a list, got a number"),
        (pb, b"image/png", png, "body: predict_batch takes a JSON body"),
        (pb, j, js({"input": ok}), "body: unknown field(s) 'input'"),
        (sv.OP_ARTICLE_PREDICT, j, js({"image": [[1]]}), "body: unknown field(s) 'image'"),
        (sv.OP_ARTICLE_BATCH, j, js({}), "body: batch_inputs required"),
        (b"predicts", j, js({"input": ok}), "op: unknown operation 'predicts'"),
    ]  # fmt: skip


def test_bad_input_gets_400_naming_the_field(main: ReplicaProcess, files: dict[str, Path]) -> None:
    cases = _bad_cases(files)
    sent = [(main.client.send(op, body, ctype), want) for op, ctype, body, want in cases]
    frames = {b"f3": [b"f3", sv.OP_PREDICT, b""], b"f5": [b"f5", sv.OP_PREDICT, b"", b"{}", b"extra"]}
    for frame in frames.values():
        main.client.send_frames(frame)
    wrong = []
    for rid, want in sent:
        code, answer = main.client.wait(rid)
        if code != 400 or want not in answer["message"]:
            wrong.append((want, code, answer))
    for rid in frames:
        code, answer = main.client.wait(rid)
        if code != 400 or not answer["message"].startswith("frames: expected 4"):
            wrong.append(("frames", code, answer))
    assert not wrong, "\n".join(map(str, wrong))
    status = main.client.status()
    assert status["state"] == "ready" and status["pid"] == main.proc.pid and main.proc.poll() is None


def _bomb(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR claiming ``width`` × ``height`` (and a valid CRC)."""
    assert png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_a_decompression_bomb_is_refused_before_decoding(main: ReplicaProcess, files: dict[str, Path]) -> None:
    ok, small_png = cv2.imencode(".png", np.zeros((8, 8, 3), dtype=np.uint8))
    bomb = _bomb(small_png.tobytes(), 30000, 30000)
    bomb_file = files["root"] / "bomb.png"
    bomb_file.write_bytes(bomb)
    limit = "30000×30000 pixels is over the limit of 25000000"
    rids = {
        "body": main.client.send(sv.OP_PREDICT, bomb, b"image/png"),
        "image_base64": main.client.send(sv.OP_PREDICT, js({"image_base64": b64(bomb)})),
        "path": main.client.send(sv.OP_PREDICT, js({"path": str(bomb_file)})),
    }
    for field, rid in rids.items():
        code, answer = main.client.wait(rid, 10)
        assert (code, answer["message"]) == (413, f"{field}: {limit}")  # from the header: never decoded
    assert main.client.status()["state"] == "ready" and main.proc.poll() is None


def test_image_pixels_over_the_limit_are_refused(small: ReplicaProcess) -> None:
    code, answer = small.client.call(sv.OP_PREDICT, js({"image": np.zeros((40, 40), dtype=int).tolist()}))
    assert (code, answer["message"]) == (413, "image: 40×40 pixels is over the limit of 1000")


def test_a_full_queue_answers_503(small: ReplicaProcess) -> None:
    """16 inputs in one request: 8 forward passes of 2 while the other requests arrive; 2 of
    them wait (max_queue), the others get 503 at once."""
    xs = [torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(200 + i)).tolist() for i in range(16)]
    big = small.client.send(sv.OP_PREDICT_BATCH, js({"batch_inputs": xs}))
    rids = [small.client.send(sv.OP_PREDICT, js({"input": xs[i]})) for i in range(12)]
    code, answer = small.client.wait(big)
    assert code == 200 and [r["batch_size"] for r in answer["results"]] == [2] * 16, answer
    codes = [small.client.wait(rid) for rid in rids]
    full = [a for c, a in codes if c == 503]
    assert len(full) >= 8 and all(a == {"message": "queue full (2 waiting)"} for a in full), codes
    assert {c for c, _ in codes} == {200, 503}
    stats = small.client.status()["stats"]
    assert stats["by_status"]["503"] == len(full) and stats["queued"] == 0


def test_sigterm_drains_then_exits_0(small: ReplicaProcess) -> None:
    """Last test of ``small``: requests sent before SIGTERM and during the drain are answered."""
    xs = [torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(300 + i)).tolist() for i in range(2)]
    rids = [small.client.send(sv.OP_PREDICT, js({"input": x})) for x in xs]
    small.proc.send_signal(signal.SIGTERM)
    assert [small.client.wait(rid)[0] for rid in rids] == [200, 200]
    assert small.client.status()["state"] == "draining"
    code, _ = small.client.call(sv.OP_PREDICT, js({"input": xs[0]}))  # within drain_idle_seconds
    assert code == 200
    assert small.proc.wait(timeout=30) == 0, small.stderr()[-3000:]
    assert "drained, exiting" in (small.task_dir / "stdout.log").read_text()


def test_a_load_failure_exits_1_with_the_reason_last(fleet: dict[str, ReplicaProcess]) -> None:
    broken = fleet["broken"]
    assert broken.proc.wait(timeout=90) == 1
    last = broken.stderr().rstrip("\n").splitlines()[-1]
    assert last.startswith("replica failed: WeightsError: ") and "best.pth" in last, last
    assert not os.path.exists(broken.address.removeprefix("ipc://"))  # never bound
