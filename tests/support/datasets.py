"""Test data makers: real images on disk in ImageFolder layout, made in milliseconds.

- ``digits(root)``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) rendered as
  PNGs, split per class into ``train``/``val``/``test`` folders.
- ``spectrograms(root)``: synthetic RF spectrograms drawn with numpy on noise — frequency-hopping
  bursts, continuous carriers and chirps — one class each (time on x, frequency on y).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DIGIT_SPLITS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}
SPECTROGRAM_CLASSES: tuple[str, ...] = ("carrier", "chirp", "hopping")


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def digits(
    root: Path,
    *,
    size: int = 16,
    splits: dict[str, float] | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Render the digits into ``root/<split>/<digit>/<n>.png``; returns split → folder.

    ``per_class`` keeps only that many images of each digit (before splitting)."""
    from sklearn.datasets import load_digits

    splits = splits or DIGIT_SPLITS
    data = load_digits()
    rng = np.random.default_rng(seed)
    out = {name: root / name for name in splits}
    for digit in range(10):
        idx = np.flatnonzero(data.target == digit)
        rng.shuffle(idx)
        if per_class is not None:
            idx = idx[:per_class]
        start = 0
        names = list(splits)
        for k, name in enumerate(names):
            count = len(idx) - start if k == len(names) - 1 else round(len(idx) * splits[name])
            for i in idx[start : start + count]:
                pixels = (data.images[i] * (255.0 / 16.0)).astype(np.uint8)
                image = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_CUBIC)
                write_png(out[name] / str(digit) / f"{i:04d}.png", image)
            start += count
    return out


def _spectrogram(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` spectrogram (rows = frequency, columns = time), uint8 RGB."""
    img = rng.normal(0.15, 0.05, (size, size)).clip(0, 1)
    t = np.arange(size)
    if kind == "carrier":  # one or two constant tones over the whole time axis
        for _ in range(rng.integers(1, 3)):
            f = rng.integers(2, size - 2)
            img[f - 1 : f + 1, :] += rng.uniform(0.5, 0.8)
    elif kind == "chirp":  # a frequency sweep
        f0, f1 = rng.uniform(0.05, 0.3) * size, rng.uniform(0.7, 0.95) * size
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        f = (f0 + (f1 - f0) * t / size).astype(int)
        for d in (-1, 0, 1):
            img[np.clip(f + d, 0, size - 1), t] += rng.uniform(0.5, 0.8)
    elif kind == "hopping":  # short bursts at random frequencies
        burst = max(2, size // 8)
        for start in range(0, size, burst + rng.integers(1, 4)):
            f = rng.integers(2, size - 2)
            img[f - 1 : f + 2, start : start + burst] += rng.uniform(0.5, 0.8)
    else:
        raise ValueError(kind)
    gray = (img.clip(0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(gray, cv2.COLORMAP_VIRIDIS)


def spectrograms(
    root: Path,
    *,
    per_class: int = 12,
    size: int = 48,
    seed: int = 0,
    classes: tuple[str, ...] = SPECTROGRAM_CLASSES,
) -> Path:
    """Write ``root/<class>/<n>.png`` for each class; returns ``root``."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        for n in range(per_class):
            write_png(root / kind / f"{kind}_{n:03d}.png", _spectrogram(kind, size, rng))
    return root
