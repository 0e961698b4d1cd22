"""The inference job: classify an image, a folder (recursive), a zip or a URL with a trained model.

Inputs: ``cfg_path`` (the ``config.yaml`` written by training), ``weight_path`` (its ``best.pth``
or ``last.pth``, or a bare state dict; loaded with ``weights_only=True``) — each local, a zip or
a URL — and ``source_path``. Images are decoded and transformed as in validation (resize,
normalise), batched (``batch_size``) and run under ``torch.inference_mode()``, channels-last on
the CPU.

Outputs under ``save_path[/name]`` (``save_path`` null: ``<task_dir>/results``):
``results.json`` (``{"summary": ..., "results": [...]}``) and ``results.csv`` (one row per
image). Each result is ``{image, top_class, probability, predictions: [{class_id, class_name,
probability}, ...top_k]}``; an unreadable image gets ``error`` instead of predictions.
Events: a ``result`` event for the first image as soon as it is known, progress, and a final
``result`` event (the task's ``res``): the last image's result plus ``summary`` (count, failed,
per-class counts, the result file paths).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.fx
import yaml
from torch.fx.experimental import optimization as fx_optimization
from torch.utils.data import DataLoader

from protocol import serving as sv
from protocol.catalog import IMAGE_EXTENSIONS
from runner import datasets, devices, fetch, models, upload
from runner.context import JobContext
from runner.safefs import OutputTree, text_writer


@dataclass(frozen=True)
class InferenceParams:
    cfg_path: str
    weight_path: str
    source_path: str
    save_path: str | None = None
    name: str | None = None
    batch_size: int = 32
    top_k: int = 5
    enable_upload: bool = False
    upload_url: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> InferenceParams:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known and v is not None}
        missing = [k for k in ("cfg_path", "weight_path", "source_path") if k not in values]
        if missing:
            raise ValueError(f"inference parameter(s) missing: {', '.join(missing)}")
        return cls(**values)


@dataclass(frozen=True)
class ModelConfig:
    model: str
    num_classes: int
    class_names: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"config {path.name} is not valid YAML: {exc}") from None
        model, num_classes, image_size, names = sv.model_config(raw, f"config {path.name}")
        return cls(
            model=model,
            num_classes=num_classes,
            class_names=names,
            image_size=image_size,
            mean=tuple(float(v) for v in raw.get("mean", datasets.MEAN)),
            std=tuple(float(v) for v in raw.get("std", datasets.STD)),
        )


def load_model(cfg: ModelConfig, weights: Path, device: devices.Device) -> tuple[torch.nn.Module, str]:
    """The trained model in eval mode on ``device``, and a note on how it was prepared.

    On the CPU: convolution + batch-norm pairs folded into one convolution (``torch.fx``;
    measured here +25% images/s on resnet18) when the model traces, and channels-last memory
    format (+15%). A model that does not trace runs unfused: same results, a little slower.
    """
    model = models.build(cfg.model, cfg.num_classes)
    models.load_state(
        model,
        models.state_of(models.load_weights_file(weights)),
        what=f"weights {weights.name}",
    )
    model.eval().to(device.torch_device)
    if device.is_cuda:
        return model, "eval"
    note = "eval, conv+bn fused, channels-last"
    try:
        fused = fx_optimization.fuse(model)
    except (
        torch.fx.proxy.TraceError,
        TypeError,
        RuntimeError,
        NotImplementedError,
        AttributeError,
    ) as exc:
        fused, note = model, f"eval, channels-last (not fused: {type(exc).__name__})"
    if fused is not model and not _same_outputs(model, fused, cfg.image_size):
        # A traced graph can miss what the eager forward does (inception_v3 here): trust the
        # check, not the trace.
        fused, note = (
            model,
            "eval, channels-last (fusion changed the outputs: not fused)",
        )
    fused.to(memory_format=torch.channels_last)
    return fused, note


def _same_outputs(reference: torch.nn.Module, candidate: torch.nn.Module, size: int) -> bool:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = reference(x), candidate(x)
    scale = max(1.0, float(want.abs().max()))
    return bool(want.shape == got.shape and torch.allclose(want, got, rtol=1e-3, atol=1e-3 * scale))


def forward(model: torch.nn.Module, images: torch.Tensor, device: devices.Device) -> torch.Tensor:
    """The softmax probabilities (float32, on ``device``) of a batch of model-ready images
    ``(N, 3, S, S)``: the one forward step of the inference job and the serving replicas.
    Call it under ``torch.inference_mode()``."""
    images = device.to(images)
    if not device.is_cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    with device.autocast():
        logits = model(images)
    return torch.softmax(logits.float(), dim=1)


def predict(model: torch.nn.Module, loader: DataLoader[Any], device: devices.Device, top_k: int) -> Any:
    """Yield ``(indices, ok, top probabilities, top class ids)`` per batch."""
    with torch.inference_mode():
        for images, index, ok in loader:
            probs = forward(model, images, device)
            top = probs.topk(min(top_k, probs.shape[1]), dim=1)
            yield (
                index.tolist(),
                ok.tolist(),
                top.values.cpu().tolist(),
                top.indices.cpu().tolist(),
            )


def _result(image: Path, names: list[str], probs: list[float], ids: list[int]) -> dict[str, Any]:
    predictions = [
        {"class_id": int(c), "class_name": names[c], "probability": round(float(p), 6)} for p, c in zip(probs, ids)
    ]
    return {
        "image": str(image),
        "top_class": predictions[0]["class_name"],
        "probability": predictions[0]["probability"],
        "predictions": predictions,
    }


def _write(out: OutputTree, results: list[dict[str, Any]], summary: dict[str, Any], top_k: int) -> tuple[Path, Path]:
    json_path = out.write_text(
        "results.json", json.dumps({"summary": summary, "results": results}, ensure_ascii=False, indent=1)
    )
    csv_path = out.write_with("results.csv", text_writer(lambda fh: _write_csv(fh, results, top_k)))
    return json_path, csv_path


def _write_csv(fh: Any, results: list[dict[str, Any]], top_k: int) -> None:
    writer = csv.writer(fh)
    header = ["image", "top_class", "probability"]
    for k in range(1, top_k + 1):
        header += [f"class_{k}", f"probability_{k}"]
    writer.writerow(header + ["error"])
    for r in results:
        row = [r["image"], r.get("top_class", ""), r.get("probability", "")]
        for k in range(top_k):
            preds = r.get("predictions", [])
            row += [preds[k]["class_name"], preds[k]["probability"]] if k < len(preds) else ["", ""]
        writer.writerow(row + [r.get("error", "")])


def run(ctx: JobContext) -> str:
    """The ``inference`` job; returns the final message."""
    p = InferenceParams.from_params(ctx.params)
    if p.batch_size < 1 or p.top_k < 1:
        raise ValueError("batch_size and top_k must be >= 1")
    device = devices.resolve(ctx.device)
    inputs = fetch.Inputs(ctx.task_dir, fetch.Limits.from_config(ctx.config), ctx.check_stop, ctx.log)
    cfg = ModelConfig.load(inputs.resolve_file(p.cfg_path, "config", (".yaml", ".yml")))
    weights = inputs.resolve_file(p.weight_path, "weights", (".pth", ".pt", ".bin"))
    source = inputs.resolve(p.source_path, "source")
    images = datasets.list_images(source)
    if not images:
        raise ValueError(f"no images found in {p.source_path} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    if p.save_path:
        out = inputs.output(str(Path(p.save_path) / p.name) if p.name else p.save_path)
    else:
        out = OutputTree(inputs.task_tree.mkdir(Path("results", p.name or "")))
    out_dir = out.root

    model, prepared = load_model(cfg, weights, device)
    top_k = min(p.top_k, cfg.num_classes)
    dataset = datasets.ImageList(
        images,
        datasets.transforms(cfg.image_size, mean=cfg.mean, std=cfg.std),
        cfg.image_size,
    )
    workers = min(ctx.spec.dataloader_workers, max(0, (len(images) - 1) // p.batch_size))
    loader = DataLoader(
        dataset,
        batch_size=p.batch_size,
        num_workers=workers,
        pin_memory=device.pin_memory,
        worker_init_fn=datasets.seed_worker if workers else None,
    )
    ctx.log(
        f"inference with {cfg.model} ({cfg.num_classes} classes) on {device}: {len(images)} images, "
        f"batch_size {p.batch_size}, {workers} loader workers, model {prepared}; results in {out_dir}"
    )

    results: list[dict[str, Any]] = [{} for _ in images]
    failed = 0
    done = 0
    last_pct = -1
    started = time.perf_counter()
    for index, ok, probs, ids in predict(model, loader, device, top_k):
        ctx.check_stop()
        for i, good, pr, cid in zip(index, ok, probs, ids):
            if good:
                results[i] = _result(images[i], cfg.class_names, pr, cid)
            else:
                failed += 1
                results[i] = {"image": str(images[i]), "error": "cannot decode image"}
                ctx.warning(f"cannot decode {images[i]}: skipped")
        if done == 0 and "top_class" in results[index[0]]:
            ctx.result(
                f"{images[index[0]].name}: {results[index[0]]['top_class']}",
                results[index[0]],
            )
        done += len(index)
        pct = int(99 * done / len(images))
        if pct != last_pct:  # at most ~100 progress events, however many images
            last_pct = pct
            ctx.progress(pct, f"{done}/{len(images)} images")
    elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for r in results:
        if "top_class" in r:
            counts[r["top_class"]] = counts.get(r["top_class"], 0) + 1
    summary: dict[str, Any] = {
        "count": len(images), "failed": failed, "class_counts": counts,
        "images_per_s": round(len(images) / max(elapsed, 1e-9), 2), "model": cfg.model,
    }  # fmt: skip
    json_path, csv_path = _write(out, results, summary, top_k)
    summary.update(results_json=str(json_path), results_csv=str(csv_path))
    last = next((r for r in reversed(results) if "top_class" in r), results[-1])
    ctx.result(
        f"{len(images)} images classified ({failed} unreadable) in {elapsed:.2f} s; results in {out_dir}",
        {**last, "summary": summary},
    )
    if failed == len(images):
        raise ValueError(f"none of the {len(images)} images could be decoded")
    if p.enable_upload:
        cfg_up = upload.UploadConfig.from_job(ctx.params, ctx.config)
        items = [upload.UploadItem(path, *upload.INFERENCE_RESULT) for path in (json_path, csv_path)]
        failures = upload.upload(items, cfg_up, upload.Reporter(ctx.log, ctx.error, ctx.wait))
        if failures:
            message = "; ".join(failures)
            ctx.error(f"upload failed (local results kept in {out_dir}): {message}")
            return f"completed; upload failed: {message}"
    return "completed"
