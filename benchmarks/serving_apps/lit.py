"""LitServe (``litserve`` from PyPI) serving the same model with our settings.

    python -m benchmarks.serving_apps.lit --port 8002 --cfg config.yaml --weights best.pth \\
        [--threads 2] [--max-batch-size 16] [--batch-timeout-ms 5]

The same preparation of the model as our replicas (``runner.inference.load_model``: eval,
conv+bn fused, channels-last), the same torch threads in its one inference worker, the same
dynamic batching (``max_batch_size``, ``batch_timeout`` = our ``max_batch_delay_ms``), one API
server process, and ``fast_queue=True`` (ZeroMQ between the API server and the worker: LitServe's
own advice above 100 requests/s). Request ``{"input": [[[...]]]}`` (a ``(3, S, S)`` tensor as
nested lists), answer ``{"prediction": [...]}`` (softmax probabilities).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import litserve as ls
import numpy as np
import torch


class Classifier(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, cfg: Path, weights: Path, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg, self.weights, self.threads = cfg, weights, threads

    def setup(self, device: str) -> None:
        from runner import devices
        from runner.inference import ModelConfig, load_model

        torch.set_num_threads(self.threads)
        self.model, _ = load_model(ModelConfig.load(self.cfg), self.weights, devices.resolve("cpu"))

    def decode_request(self, request):  # type: ignore[no-untyped-def] - unannotated: LitServe reads the annotation
        return torch.from_numpy(np.asarray(request["input"], dtype=np.float32))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(self.model(x.contiguous(memory_format=torch.channels_last)), dim=1)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        return {"prediction": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    args = parser.parse_args()
    api = Classifier(args.cfg, args.weights, args.threads, max_batch_size=args.max_batch_size,
                     batch_timeout=args.batch_timeout_ms / 1000.0)  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
