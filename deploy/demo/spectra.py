"""Synthetic RF spectrograms of drone-like signals, drawn with numpy on noise (milliseconds).

Rows are frequency, columns time; each image is one class's pattern with random parameters:

- ``carrier``: one or two fixed carriers over the whole time axis (an analog video or telemetry
  tone);
- ``chirp``: a frequency sweep across most of the band;
- ``hopping``: short bursts at random frequencies (a frequency-hopping control link);
- ``ofdm``: wide bands switched on for a frame, then off (a digital video downlink).

``spectrograms(root)`` writes ``root/<class>/<class>_<n>.png`` (ImageFolder layout). Used by the
demo (``python -m deploy.demo``) and the tests (``tests/support/datasets.py``); it needs numpy and
OpenCV only.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: The classes the tests train on (three, the default).
SPECTROGRAM_CLASSES: tuple[str, ...] = ("carrier", "chirp", "hopping")
#: Every pattern ``spectrogram`` draws.
KINDS: tuple[str, ...] = ("carrier", "chirp", "hopping", "ofdm")


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def spectrogram(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
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
        sweep = (f0 + (f1 - f0) * t / size).astype(int)
        for d in (-1, 0, 1):
            img[np.clip(sweep + d, 0, size - 1), t] += rng.uniform(0.5, 0.8)
    elif kind == "hopping":  # short bursts at random frequencies
        burst = max(2, size // 8)
        for start in range(0, size, burst + rng.integers(1, 4)):
            f = rng.integers(2, size - 2)
            img[f - 1 : f + 2, start : start + burst] += rng.uniform(0.5, 0.8)
    elif kind == "ofdm":  # a wide band, on for a frame, off for a gap, repeated
        width = int(rng.integers(size // 5, size // 3))
        low = int(rng.integers(1, size - width - 1))
        frame, gap = int(rng.integers(size // 6, size // 3)), int(rng.integers(2, max(3, size // 8)))
        for start in range(int(rng.integers(0, gap + 1)), size, frame + gap):
            img[low : low + width, start : start + frame] += rng.uniform(0.3, 0.5)
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
    """Write ``root/<class>/<class>_<n>.png`` for each class; returns ``root``."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        for n in range(per_class):
            write_png(root / kind / f"{kind}_{n:03d}.png", spectrogram(kind, size, rng))
    return root
