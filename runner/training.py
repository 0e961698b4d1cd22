"""The training job: a torchvision classifier on an ImageFolder dataset, with events.

Follows torchvision's ``references/classification/train.py`` (``train_one_epoch``, ``evaluate``,
a checkpoint dict with resume) and emits events instead of printing:

- ``training`` steps (``step``, metrics ``loss``) at most ``1 / STEP_EVENT_INTERVAL`` per second;
- per epoch ``epoch_start``, a ``training`` summary (``TRAINING_SUMMARY_METRICS``: ``train_loss``,
  ``train_acc``; no ``step``), ``validation`` (``VALIDATION_METRICS``) and ``epoch_end`` (every
  key of ``protocol.events.EPOCH_METRICS``, plus ``train_images_per_s``; the same numbers), then
  ``completed``;
- on ``epoch_end``, beside ``metrics``: the validation pass's ``confusion``, ``class_names`` and
  ``per_class`` (``runner.metrics.class_report``);
- ``epoch``, ``total_epochs`` and ``progress`` (0–100) on each, for the task record.

Artifacts under ``save_path[/name]``: ``best.pth`` (best validation accuracy), ``last.pth``
(every epoch end, and at the batch boundary where a cancel stopped the job) and
``config.yaml`` (model, num_classes, class_names, image_size, mean, std). The checkpoints are
plain dicts (``torch.load(weights_only=True)``): ``model``, ``optimizer``, ``scheduler``,
``epoch`` (epochs completed), ``step``, ``best_acc``, ``model_name``, ``num_classes``,
``class_names``, ``image_size``. A ``weight_path`` that is such a checkpoint of the same model
and class count resumes it (epoch, optimizer, scheduler); any other weights file initialises the
model (tensors of a different shape, such as another head, are skipped with a warning).

Determinism: with ``seed`` and ``deterministic`` set and ``augment`` off, the weights after an
epoch are bit-identical to a bare loop that calls ``seed_everything``, ``models.build``,
``make_loader`` and ``make_optimizer`` in the same order (``benchmarks/training.py`` checks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protocol import events as ev
from runner import datasets, devices, fetch, metrics, models, upload
from runner.context import Cancelled, JobContext
from runner.trainparts import TrainingParams, make_loader, make_optimizer, seed_everything, write_config

__all__ = ["TrainingParams", "make_loader", "make_optimizer", "run", "seed_everything", "write_config"]

#: Seconds between two ``training`` stage events (a few per second at most).
STEP_EVENT_INTERVAL = 0.5


# -- the job -----------------------------------------------------------------------------
@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_acc: float = -1.0  # -1: no best.pth yet
    last_metrics: dict[str, float] = field(default_factory=dict)


class _Trainer:
    def __init__(self, ctx: JobContext, p: TrainingParams) -> None:
        self.ctx = ctx
        self.p = p
        self.device = devices.resolve(ctx.device)
        self.inputs = fetch.Inputs(ctx.task_dir, fetch.Limits.from_config(ctx.config), ctx.check_stop, ctx.log)
        self.state = _State()
        self._amp_reported = False
        self._val_report: dict[str, Any] = {}  # the last validation pass's metrics.class_report

    # setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        p, ctx = self.p, self.ctx
        self.out = self.inputs.output(str(Path(p.save_path) / p.name) if p.name else p.save_path)
        self.out_dir = self.out.root
        train_dir = self.inputs.resolve(p.train_path, "train")
        val_dir = self.inputs.resolve(p.val_path, "val")
        if p.seed is not None:
            seed_everything(p.seed, p.deterministic)
        elif p.deterministic:
            ctx.warning("deterministic is set without a seed: runs will still differ")
        train_tf = datasets.transforms(p.image_size, train=True, augment=p.augment)
        if p.seed is not None:
            train_tf.set_random_seed(p.seed)
        self.train_set = datasets.ImageFolder(train_dir, train_tf)
        names = self.train_set.class_names
        if len(names) != p.num_classes:
            raise ValueError(
                f"num_classes is {p.num_classes} but the training set {p.train_path} has "
                f"{len(names)} class folders ({', '.join(names[:20])})"
            )
        self.val_set = datasets.ImageFolder(val_dir, datasets.transforms(p.image_size), class_names=names)
        ctx.log(
            f"data: {len(self.train_set)} training and {len(self.val_set)} validation images, "
            f"{p.num_classes} classes ({', '.join(names[:20])})"
        )
        self.model = self._initial_model()
        self.batch_size = p.batch_size
        cap = ctx.spec.batch_cap
        if not self.device.is_cuda and cap and p.batch_size > cap:
            self.batch_size = cap
            ctx.warning(
                f"batch_size {p.batch_size} clamped to {cap} for training on the CPU (RFUAV_CPU_BATCH_CAP, or the seed's CPU_TRAINING_MAX_BATCH_SIZE)"
            )
        workers = p.num_workers if p.num_workers is not None else ctx.spec.dataloader_workers
        self.train_loader = make_loader(
            self.train_set, batch_size=self.batch_size, workers=workers, shuffle=p.shuffle,
            seed=p.seed, pin_memory=self.device.pin_memory,
        )  # fmt: skip
        self.val_loader = make_loader(
            self.val_set, batch_size=self.batch_size, workers=workers, shuffle=False, seed=p.seed,
            pin_memory=self.device.pin_memory,
        )  # fmt: skip
        self.model.to(self.device.torch_device)
        self.optimizer = make_optimizer(self.model, p.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, p.num_epochs))
        self.scaler = torch.amp.GradScaler("cuda") if self.device.is_cuda else None
        self.criterion = nn.CrossEntropyLoss()
        if self._resume is not None:
            self.optimizer.load_state_dict(self._resume["optimizer"])
            if isinstance(self._resume.get("scheduler"), dict):
                self.scheduler.load_state_dict(self._resume["scheduler"])
        write_config(self.out, p, names)
        ctx.log(
            f"training {p.model} on {self.device} for {p.num_epochs} epochs: batch_size {self.batch_size}, "
            f"lr {p.learning_rate:g}, image_size {p.image_size}, {workers} loader workers, "
            f"{torch.get_num_threads()} threads; output {self.out_dir}"
        )

    def _initial_model(self) -> nn.Module:
        p, ctx = self.p, self.ctx
        self._resume: dict[str, Any] | None = None
        if p.weight_path:
            path = self.inputs.resolve_file(p.weight_path, "weights", (".pth", ".pt", ".pth.tar", ".bin"))
            checkpoint = models.load_weights_file(path)
            model = models.build(p.model, p.num_classes)
            resumable = (
                isinstance(checkpoint.get("optimizer"), dict)
                and isinstance(checkpoint.get("epoch"), int)
                and checkpoint.get("model_name") == p.model
                and checkpoint.get("num_classes") == p.num_classes
            )
            if resumable:
                models.load_state(model, models.state_of(checkpoint), what=f"checkpoint {path.name}")
                self._resume = checkpoint
                self.state.epoch = int(checkpoint["epoch"])
                self.state.step = int(checkpoint.get("step", 0))
                self.state.best_acc = float(checkpoint.get("best_acc", -1.0))
                ctx.log(
                    f"resuming from {path.name}: {self.state.epoch} epochs done, best_acc {self.state.best_acc:.2f}%"
                )
                return model
            skipped = models.load_state(
                model,
                models.state_of(checkpoint),
                what=f"weights {path.name}",
                allow_shape_mismatch=True,
            )
            ctx.log(f"initial weights from {path.name}")
            if skipped:
                ctx.warning(
                    f"skipped {len(skipped)} tensors of another shape ({', '.join(skipped[:4])}): a head for another class count"
                )
            return model
        if p.pretrained:
            state, why = models.cached_imagenet_state(p.model)
            if state is not None:
                ctx.log(f"pretrained: {why}")
                return models.build(p.model, p.num_classes, imagenet_state=state)
            ctx.warning(f"pretrained requested but {why} (no download at run time): training from scratch")
        return models.build(p.model, p.num_classes)

    # the loop ------------------------------------------------------------------------
    def _progress(self, epoch_done: float) -> int:
        return min(99, int(100 * epoch_done / max(1, self.p.num_epochs)))

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_acc": max(self.state.best_acc, 0.0),
            "model_name": self.p.model,
            "num_classes": self.p.num_classes,
            "class_names": list(self.train_set.class_names),
            "image_size": self.p.image_size,
            "metrics": dict(self.state.last_metrics),
        }

    def _save(self, name: str) -> Path:
        # A new file renamed over the old one: a reader (or a kill) never sees half a file.
        checkpoint = self._checkpoint()
        return self.out.write_with(name, lambda fh: torch.save(checkpoint, fh))

    def train(self) -> None:
        p, ctx = self.p, self.ctx
        total = p.num_epochs
        if self.state.epoch >= total:
            ctx.log(f"the checkpoint already has {self.state.epoch} epochs (num_epochs {total}): nothing to train")
        for epoch in range(self.state.epoch + 1, total + 1):
            ctx.emit(
                ev.LOG, f"epoch {epoch}/{total} started", stage=ev.EPOCH_START, epoch=epoch,
                total_epochs=total, progress=self._progress(epoch - 1),
            )  # fmt: skip
            lr = float(self.optimizer.param_groups[0]["lr"])
            try:
                train_loss, train_acc, images_per_s = self._train_one_epoch(epoch)
                val = self._evaluate(epoch)
            except Cancelled:
                path = self._save("last.pth")
                ctx.warning(f"stopped during epoch {epoch}: {path} holds {self.state.epoch} complete epochs")
                raise
            self.scheduler.step()
            self.state.epoch = epoch
            improved = val["val_acc"] > self.state.best_acc
            if improved:
                self.state.best_acc = val["val_acc"]
            summary: dict[str, float] = {
                "epoch": epoch, "total_epochs": total, "train_loss": train_loss, "train_acc": train_acc,
                **val, "learning_rate": lr, "best_acc": self.state.best_acc, "train_images_per_s": images_per_s,
            }  # fmt: skip
            self.state.last_metrics = {k: float(v) for k, v in summary.items()}
            if improved:
                self._save("best.pth")
            self._save("last.pth")
            ctx.metrics(
                f"epoch {epoch}/{total}: train_loss {train_loss:.4f}, train_acc {train_acc:.2f}%, "
                f"val_loss {val['val_loss']:.4f}, val_acc {val['val_acc']:.2f}%, best {self.state.best_acc:.2f}%"
                + (" (saved best.pth)" if improved else ""),
                summary, stage=ev.EPOCH_END, epoch=epoch, total_epochs=total, step=self.state.step,
                progress=self._progress(epoch), **self._val_report,
            )  # fmt: skip
        best = max(self.state.best_acc, 0.0)
        ctx.metrics(
            f"training completed: best val_acc {best:.2f}%; artifacts in {self.out_dir}",
            {"best_acc": best, "epoch": self.state.epoch, "total_epochs": total},
            stage=ev.STAGE_COMPLETED, epoch=self.state.epoch, total_epochs=total, progress=100,
        )  # fmt: skip
        # The task's ``res``: where its artifacts are (a deployment's ``from_task`` reads them).
        artifacts = {name: str(self.out_dir / f"{name}.pth") for name in ("best", "last")}
        ctx.result(
            f"artifacts in {self.out_dir}",
            {"best_acc": best, "out_dir": str(self.out_dir), "config_path": str(self.out_dir / "config.yaml"),
             "best_path": artifacts["best"], "last_path": artifacts["last"]},
        )  # fmt: skip

    def _report_amp(self, dtype: torch.dtype, scaler: torch.amp.GradScaler) -> None:
        """Once per job on CUDA, after the first step: what mixed precision actually did (the
        ``amp`` field; ``deploy/gpu_check.py`` checks it)."""
        self._amp_reported = True
        amp = {
            "autocast_dtype": str(dtype).removeprefix("torch."),
            "grad_scaler_enabled": scaler.is_enabled(),
            "grad_scale": float(scaler.get_scale()),
        }
        self.ctx.log(
            f"mixed precision: autocast {amp['autocast_dtype']}, GradScaler scale {amp['grad_scale']:g}", amp=amp
        )

    def _train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        ctx, device, model = self.ctx, self.device, self.model
        model.train()
        total = self.p.num_epochs
        batches = len(self.train_loader)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device.torch_device)
        correct = torch.zeros((), dtype=torch.int64, device=device.torch_device)
        seen = 0
        last_event = 0.0
        started = time.perf_counter()
        for i, (images, targets) in enumerate(self.train_loader, 1):
            ctx.check_stop()
            images, targets = device.to(images), device.to(targets)
            with device.autocast():
                logits = model(images)
                loss = self.criterion(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if not self._amp_reported:
                    self._report_amp(logits.dtype, self.scaler)
            else:
                loss.backward()
                self.optimizer.step()
            n = targets.shape[0]
            seen += n
            self.state.step += 1
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(dim=1) == targets).sum()
            now = time.monotonic()
            if now - last_event >= STEP_EVENT_INTERVAL or i == batches:
                last_event = now
                value = float(loss.item())
                ctx.metrics(
                    f"epoch {epoch}/{total} batch {i}/{batches} loss {value:.4f}",
                    {"loss": value, "step": self.state.step, "epoch": epoch, "batch": i, "batches": batches},
                    stage=ev.TRAINING, step=self.state.step, epoch=epoch, total_epochs=total,
                    progress=self._progress(epoch - 1 + i / batches),
                )  # fmt: skip
        elapsed = time.perf_counter() - started
        ctx.check_stop()
        seen = max(seen, 1)
        train_loss, train_acc = float(loss_sum.item() / seen), float(correct.item() * 100.0 / seen)
        # The epoch's summary in the original's shape (no ``step``: not a step, ``ev.is_step``).
        ctx.metrics(
            f"training {epoch}/{total}: train_loss {train_loss:.4f}, train_acc {train_acc:.2f}%",
            {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc},
            stage=ev.TRAINING, epoch=epoch, total_epochs=total, progress=self._progress(epoch),
        )  # fmt: skip
        return train_loss, train_acc, seen / max(elapsed, 1e-9)

    def _evaluate(self, epoch: int) -> dict[str, float]:
        ctx, device, model = self.ctx, self.device, self.model
        model.eval()
        all_logits: list[torch.Tensor] = []
        all_targets: list[torch.Tensor] = []
        loss_sum = 0.0
        with torch.inference_mode():
            for images, targets in self.val_loader:
                ctx.check_stop()
                images, targets = device.to(images), device.to(targets)
                with device.autocast():
                    logits = model(images)
                loss_sum += float(self.criterion(logits.float(), targets).item()) * targets.shape[0]
                all_logits.append(logits.float().cpu())
                all_targets.append(targets.cpu())
        logits_cat, targets_cat = torch.cat(all_logits), torch.cat(all_targets)
        result = {
            "val_loss": loss_sum / max(1, targets_cat.shape[0]),
            **metrics.classification(logits_cat, targets_cat),
        }
        self._val_report = metrics.class_report(logits_cat, targets_cat, self.val_set.class_names)
        ctx.metrics(
            f"validation {epoch}/{self.p.num_epochs}: val_loss {result['val_loss']:.4f}, val_acc {result['val_acc']:.2f}%",
            {"epoch": epoch, **{k: result[k] for k in ev.VALIDATION_METRICS[1:]}},
            stage=ev.VALIDATION, epoch=epoch, total_epochs=self.p.num_epochs, progress=self._progress(epoch),
        )  # fmt: skip
        return result

    # after ---------------------------------------------------------------------------
    def upload(self) -> str | None:
        """Upload config.yaml and best.pth; returns the failure summary, or None."""
        cfg = upload.UploadConfig.from_job(self.ctx.params, self.ctx.config)
        items = [upload.UploadItem(self.out_dir / "config.yaml", *upload.TRAINING_CONFIG)]
        best = self.out_dir / "best.pth"
        if best.exists():
            items.append(upload.UploadItem(best, *upload.TRAINING_WEIGHTS))
        self.ctx.log(f"uploading {len(items)} files to the satellite platform")
        failures = upload.upload(items, cfg, upload.Reporter(self.ctx.log, self.ctx.error, self.ctx.wait))
        return "; ".join(failures) if failures else None


def run(ctx: JobContext) -> str:
    """The ``training`` job. Returns the final message ("completed" or "completed; upload
    failed: ..."); raises on failure and ``Cancelled`` when stopped."""
    p = TrainingParams.from_params(ctx.params)
    trainer = _Trainer(ctx, p)
    trainer.prepare()
    trainer.train()
    if p.enable_upload:
        failed = trainer.upload()
        if failed:
            ctx.error(f"upload failed (local results kept in {trainer.out_dir}): {failed}")
            return f"completed; upload failed: {failed}"
    return "completed"
