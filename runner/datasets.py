"""Image data for training and inference: ImageFolder layout read with OpenCV, albumentations
transforms, and the image listing shared with preprocessing.

Contracts:

- ``ImageFolder(root)``: one sub-folder per class (sorted names = class indices), images found
  recursively inside each class folder (extensions of ``protocol.catalog.IMAGE_EXTENSIONS``),
  in sorted order. Items are ``(CHW float tensor, class index)``.
- ``transforms(image_size, train=..., augment=...)``: resize to ``image_size``², normalise with
  ``MEAN``/``STD``; the training variant adds mild augmentation only when ``augment``.
- ``read_rgb(path)`` returns an HxWx3 uint8 RGB array or raises ``ImageReadError``;
  ``decode_rgb(data, what)`` the same from the file's bytes (the one decode path of training,
  inference and serving).
"""

from __future__ import annotations

import os
import signal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from protocol.catalog import IMAGE_EXTENSIONS

#: ImageNet statistics: what torchvision's pretrained weights expect; written to config.yaml.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageReadError(OSError):
    """An image file that OpenCV cannot decode."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (sorted; hidden files and folders skipped)."""
    if root.is_file():
        return [root] if is_image(root) else []
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image(Path(f)))
    else:
        found = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and is_image(p)]
    return sorted(found)


def class_folders(root: Path) -> list[str]:
    """Class names of an ImageFolder root: its sub-folders that hold at least one image."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a directory")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [n for n in names if list_images(root / n)]


def decode_rgb(data: bytes | np.ndarray, what: str) -> np.ndarray:
    """Decode an encoded image (the bytes of a file) to HxWx3 uint8 RGB, as every job and the
    serving replicas do: ``cv2.imdecode`` with ``IMREAD_COLOR`` (a grayscale image becomes three
    equal channels), then BGR to RGB. Raises ``ImageReadError`` naming ``what``."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    except cv2.error:  # most bad input gives None; some codecs raise
        image = None
    if image is None:
        raise ImageReadError(f"cannot decode image {what}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_rgb(path: Path) -> np.ndarray:
    """Decode ``path`` to RGB uint8. ``cv2.imread`` fails silently (None) on a bad file: say so."""
    # imread cannot take every path (unicode): read the bytes, decode them.
    return decode_rgb(np.fromfile(str(path), dtype=np.uint8), str(path))


def transforms(
    image_size: int,
    *,
    train: bool = False,
    augment: bool = False,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> A.Compose:
    steps: list[Any] = [A.Resize(image_size, image_size)]
    if train and augment:
        # Mild: spectrograms have meaningful axes (time, frequency), so no flips or rotations,
        # just small shifts/scales and level changes.
        steps += [
            A.Affine(scale=(0.95, 1.05), translate_percent=(-0.04, 0.04), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps)


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """An ImageFolder tree read with OpenCV. ``class_names`` fixes the index of each class
    (pass the training set's names to the validation set so both agree)."""

    def __init__(self, root: Path, transform: A.Compose, class_names: list[str] | None = None) -> None:
        self.root = root
        self.transform = transform
        found = class_folders(root)
        if class_names is None:
            class_names = found
        else:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise ValueError(f"{root} has class folder(s) not in the training set: {', '.join(unknown)}")
        self.class_names = list(class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        self.samples: list[tuple[Path, int]] = [
            (path, index[name]) for name in found for path in list_images(root / name)
        ]
        if not self.samples:
            raise ValueError(f"no images found in {root} (expected one sub-folder per class)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        image = self.transform(image=read_rgb(path))["image"]
        return image, target


class ImageList(Dataset[tuple[torch.Tensor, int, bool]]):
    """Images for inference: ``(tensor, index, ok)``; an unreadable image yields ``ok=False``
    (and a zero tensor) so one bad file does not stop the batch."""

    def __init__(self, paths: list[Path], transform: A.Compose, image_size: int) -> None:
        self.paths = paths
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        try:
            image = self.transform(image=read_rgb(self.paths[i]))["image"]
        except ImageReadError:
            return torch.zeros(3, self.image_size, self.image_size), i, False
        return image, i, True


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each worker gets its own, reproducible augmentation RNG
    (forked workers would otherwise share albumentations' state) and one OpenCV thread.

    Workers ignore SIGTERM: a cancel signals the job's whole process group, and a worker that
    died of it would fail the job before it reaches its batch boundary (and saves ``last.pth``).
    The runner shuts its workers down itself; SIGKILL after the grace period still ends them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(1)
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    if info is not None:
        transform = getattr(info.dataset, "transform", None)
        if isinstance(transform, A.Compose):
            transform.set_random_seed(seed)
