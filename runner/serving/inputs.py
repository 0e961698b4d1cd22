"""One request's body into model-ready float tensors (SERVING.md "Predictions"). Pure functions:
every refusal is a ``BadInput`` whose message names the field and the reason.

Forms (``op`` → fields, exactly one per request):

- ``predict``: ``input`` (a ``(3, S, S)`` float tensor, used as is), ``image`` (pixels ``(H, W, 3)``
  RGB or ``(H, W)`` gray, integers 0-255), ``image_base64`` (a PNG or JPEG file's bytes), ``path``
  (an image file inside the data roots), or a raw PNG/JPEG body (``Content-Type: image/png`` or
  ``image/jpeg``);
- ``predict_batch``: ``batch_inputs``, ``images``, ``images_base64``, ``paths`` (lists of the
  above, at most ``Rules.max_items``, not empty);
- ``article_predict``: ``input``; ``article_batch``: ``batch_inputs``.

Images are decoded as training decodes its files (``datasets.decode_rgb``: OpenCV, a gray image
becomes three equal channels) and preprocessed as its validation images (``Rules.preprocess``:
``validation_preprocess``). An image's header is read first (Pillow, lazily: no pixel decoded) and
an image of more than ``Rules.max_image_pixels`` pixels is refused before it is decoded.

Numbers arrive as JSON: numpy turns the nested lists into an array and its dtype, shape and
finiteness are checked before torch sees it. ``NaN``/``Infinity`` (not JSON, but what Python's
``json`` writes) are parsed so that the refusal can name the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from PIL import Image

from protocol import serving as sv
from runner import datasets
from runner.fetch import confine
from runner.urls import FetchError

#: An RGB uint8 ``(H, W, 3)`` image → a float ``(3, S, S)`` tensor.
Preprocess = Callable[[np.ndarray], torch.Tensor]

#: The fields each op takes (exactly one of them).
OP_FIELDS: dict[bytes, tuple[str, ...]] = {
    sv.OP_PREDICT: ("input", "image", "image_base64", "path"),
    sv.OP_PREDICT_BATCH: ("batch_inputs", "images", "images_base64", "paths"),
    sv.OP_ARTICLE_PREDICT: ("input",),
    sv.OP_ARTICLE_BATCH: ("batch_inputs",),
}
BATCH_OPS: frozenset[bytes] = frozenset({sv.OP_PREDICT_BATCH, sv.OP_ARTICLE_BATCH})
#: field → how one item of it is read.
_KIND = {
    "input": "tensor", "batch_inputs": "tensor", "image": "pixels", "images": "pixels",
    "image_base64": "base64", "images_base64": "base64", "path": "path", "paths": "path",
}  # fmt: skip
#: Raw bodies (``image/jpg``: a common misspelling, same bytes).
RAW_TYPES: frozenset[str] = frozenset({"image/png", "image/jpeg", "image/jpg"})
#: Formats whose header is read before decoding: PNG and JPEG for bytes sent in a request; a
#: file in the data roots may also be any other format training reads (IMAGE_EXTENSIONS).
BYTES_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
FILE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class BadInput(ValueError):
    """A request the replica refuses (``status``, 400 unless said otherwise); ``message`` names
    the field and the reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Rules:
    """What a replica accepts: its model's ``image_size``, its preprocessing, its limits."""

    image_size: int
    preprocess: Preprocess = field(repr=False)
    max_image_pixels: int = 25_000_000
    #: Items one batch request may carry (``max_batch_size × BATCH_ITEMS_FACTOR``).
    max_items: int = 16 * sv.BATCH_ITEMS_FACTOR
    #: A ``path`` must resolve inside one of these (none: no confinement, as for jobs).
    data_roots: tuple[Path, ...] = ()

    @property
    def max_file_bytes(self) -> int:
        """The largest ``path`` file read: an uncompressed RGBA image at the pixel limit."""
        return 4 * self.max_image_pixels + (1 << 20)


def validation_preprocess(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Preprocess:
    """The training's validation transform (``datasets.transforms``) as a ``Preprocess``."""
    transform = datasets.transforms(image_size, mean=mean, std=std)

    def preprocess(rgb: np.ndarray) -> torch.Tensor:
        out: torch.Tensor = transform(image=rgb)["image"]
        return out

    return preprocess


def media_type(content_type: bytes) -> str:
    """``image/PNG; charset=x`` → ``image/png`` (parameters and case dropped)."""
    return content_type.split(b";", 1)[0].strip().lower().decode("latin-1")


def item_count(op: bytes) -> int | None:
    """Items a request of ``op`` carries when known before parsing (1), else None (a batch)."""
    return None if op in BATCH_OPS else 1


def parse_request(op: bytes, content_type: bytes, body: bytes, rules: Rules) -> torch.Tensor:
    """A request's inputs as one float32 tensor ``(N, 3, S, S)`` (N = 1 but for batch ops)."""
    fields = OP_FIELDS.get(op)
    if fields is None:
        raise BadInput(f"op: unknown operation {op.decode('latin-1')!r}")
    kind = media_type(content_type)
    if kind.startswith("image/"):
        if kind not in RAW_TYPES:
            raise BadInput(f"body: content type {kind} is not supported (image/png or image/jpeg)")
        if op != sv.OP_PREDICT:
            raise BadInput(f"body: {op.decode()} takes a JSON body (a raw image is for predict)")
        return rules.preprocess(decode_image(body, "body", rules, BYTES_FORMATS)).unsqueeze(0)
    name, value = pick_field(decode_json(body), fields)
    if op in BATCH_OPS:
        items = batch_items(value, name, rules.max_items)
        return torch.stack([parse_item(_KIND[name], item, f"{name}[{i}]", rules) for i, item in enumerate(items)])
    return parse_item(_KIND[name], value, name, rules).unsqueeze(0)


def decode_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # NaN and Infinity: refused by orjson, read here so the refusal names the field
            obj = json.loads(body)
        except (ValueError, RecursionError):
            raise BadInput("body: not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadInput(f"body: expected a JSON object, got {_json_type(obj)}")
    return obj


def pick_field(obj: dict[str, Any], fields: tuple[str, ...]) -> tuple[str, Any]:
    """The one field of ``fields`` present in ``obj``; unknown keys refused by name."""
    unknown = sorted(k for k in obj if k not in fields)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise BadInput(f"body: unknown field(s) {names} (expected exactly one of {', '.join(fields)})")
    present = [f for f in fields if f in obj]
    if len(present) != 1:
        raise BadInput(
            f"body: exactly one of {', '.join(fields)}" if len(fields) > 1 else f"body: {fields[0]} required"
        )
    return present[0], obj[present[0]]


def batch_items(value: Any, name: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f"{name}: expected a list, got {_json_type(value)}")
    if not value:
        raise BadInput(f"{name}: empty (at least one item)")
    if len(value) > max_items:
        raise BadInput(f"{name}: at most {max_items} items, got {len(value)}")
    return value


def parse_item(kind: str, value: Any, where: str, rules: Rules) -> torch.Tensor:
    """One input (``kind`` of ``_KIND``) as a float32 ``(3, S, S)`` tensor."""
    if kind == "tensor":
        return tensor_input(value, where, rules.image_size)
    if kind == "pixels":
        return rules.preprocess(pixel_input(value, where, rules.max_image_pixels))
    if kind == "base64":
        return rules.preprocess(decode_image(base64_bytes(value, where), where, rules, BYTES_FORMATS))
    return rules.preprocess(decode_image(path_bytes(value, where, rules), where, rules, FILE_FORMATS))


def _array(value: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raise BadInput(f"{where}: not a rectangular array of numbers (nested lists of equal lengths)") from None


def tensor_input(value: Any, where: str, size: int) -> torch.Tensor:
    """A model-ready tensor: shape ``(3, size, size)``, finite numbers, as float32."""
    arr = _array(value, where)
    if arr.dtype.kind not in "fiu":
        raise BadInput(f"{where}: values must be numbers")
    if arr.shape != (3, size, size):
        raise BadInput(f"{where}: expected shape (3, {size}, {size}), got {tuple(arr.shape)}")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise BadInput(f"{where}: NaN or infinity")
    return torch.from_numpy(out)


def pixel_input(value: Any, where: str, max_pixels: int) -> np.ndarray:
    """Pixels ``(H, W, 3)`` (RGB) or ``(H, W)`` (gray: three equal channels, as OpenCV decodes a
    gray file), integers 0-255, as a contiguous RGB uint8 array."""
    arr = _array(value, where)
    if arr.dtype.kind not in "fiu":
        raise BadInput(f"{where}: values must be integers 0-255")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise BadInput(f"{where}: expected shape (H, W, 3) or (H, W), got {tuple(arr.shape)}")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise BadInput(f"{where}: empty image, shape {tuple(arr.shape)}")
    check_pixels(width, height, where, max_pixels)
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise BadInput(f"{where}: values must be integers 0-255")
    if arr.min() < 0 or arr.max() > 255:
        raise BadInput(f"{where}: values must be integers 0-255")
    pixels = arr.astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels)


def check_pixels(width: int, height: int, where: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        # 413 like a body over its limit (SERVING.md): refused from the header, never decoded.
        raise BadInput(f"{where}: {width}×{height} pixels is over the limit of {max_pixels}", status=413)


def base64_bytes(value: Any, where: str) -> bytes:
    """Base64 text (whitespace and a ``data:...;base64,`` prefix allowed) → bytes."""
    if not isinstance(value, str):
        raise BadInput(f"{where}: expected a base64 string, got {_json_type(value)}")
    text = value
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where}: not valid base64") from None


def path_bytes(value: Any, where: str, rules: Rules) -> bytes:
    """The bytes of an image file that resolves inside the data roots."""
    if not isinstance(value, str):
        raise BadInput(f"{where}: expected a file path, got {_json_type(value)}")
    if not value:
        raise BadInput(f"{where}: empty")
    try:
        # Roots first: whether a path outside them exists is none of the client's business.
        resolved = confine(value, rules.data_roots, must_exist=False)
    except FetchError:
        raise BadInput(f"{where}: {value} is outside the data roots") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadInput(f"{where}: {value!r}: {exc}") from None
    if not resolved.exists():
        raise BadInput(f"{where}: {value} does not exist")
    if not resolved.is_file():
        raise BadInput(f"{where}: {value} is not a file")
    try:
        size = resolved.stat().st_size
        if size > rules.max_file_bytes:
            raise BadInput(f"{where}: {value} is {size} bytes, over the limit of {rules.max_file_bytes}")
        return resolved.read_bytes()
    except OSError as exc:
        raise BadInput(f"{where}: cannot read {value}: {exc.strerror or exc}") from None


def image_size(data: bytes, formats: tuple[str, ...]) -> tuple[int, int] | None:
    """``(width, height)`` from an image's header (nothing decoded), None when ``data`` is no
    image of ``formats``. Pillow's own format classes: ``Image.open`` would refuse a large
    image itself, with a message that does not give its size."""
    Image.init()
    prefix = data[:16]
    for name in formats:
        opener = Image.OPEN.get(name)
        if opener is None:  # a format this Pillow cannot read
            continue
        factory, accept = opener
        if accept is not None and not accept(prefix):
            continue
        try:
            with factory(io.BytesIO(data), "") as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 - a broken header, whatever the codec says: not an image
            return None
        return int(width), int(height)
    return None


def decode_image(data: bytes, where: str, rules: Rules, formats: tuple[str, ...]) -> np.ndarray:
    """Encoded image bytes → RGB uint8, its header checked against the pixel limit first."""
    size = image_size(data, formats)
    if size is None:
        names = ", ".join(formats[:-1]) + " or " + formats[-1] if len(formats) > 1 else formats[0]
        raise BadInput(f"{where}: bytes are not a {names} image")
    check_pixels(*size, where, rules.max_image_pixels)
    try:
        return datasets.decode_rgb(data, where)
    except datasets.ImageReadError:
        raise BadInput(f"{where}: cannot decode the image (truncated or corrupt)") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
