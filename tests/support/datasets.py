"""Test data makers: real images on disk in ImageFolder layout, made in milliseconds.

- ``digits(root)``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) rendered as
  PNGs, split per class into ``train``/``val``/``test`` folders.
- ``spectrograms(root)``: synthetic RF spectrograms drawn with numpy on noise — frequency-hopping
  bursts, continuous carriers and chirps — one class each (time on x, frequency on y); made by
  ``deploy/demo/spectra.py`` (the demo's data too), re-exported here with ``write_png``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deploy.demo.spectra import SPECTROGRAM_CLASSES, spectrograms, write_png

__all__ = ["DIGIT_SPLITS", "SPECTROGRAM_CLASSES", "digits", "spectrograms", "write_png"]

DIGIT_SPLITS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}


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
