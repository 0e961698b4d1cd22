"""How a setting's text becomes its value: non-negative numbers, flags, origins, model lists.

Each parser raises ``ValueError`` saying what the text must be; ``protocol.settings`` prefixes
the variable it read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from protocol.catalog import MODEL_SET, MODELS


def pos_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def pos_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def origins(raw: str) -> tuple[str, ...]:
    """``scheme://host[:port]`` origins, as browsers send them (a trailing ``/`` is dropped)."""
    out = []
    for item in (o.strip().rstrip("/") for o in raw.split(",")):
        if not item:
            continue
        if not _ORIGIN.fullmatch(item):
            raise ValueError(f"{item!r} is not an origin like 'https://ui.example:8443' ('*' is not accepted)")
        out.append(item.lower())
    return tuple(out)


def models(raw: str) -> tuple[str, ...]:
    """Catalogue models, comma-separated or a JSON array (the seed's pydantic-settings form).
    An entry of dots is the seed README's placeholder (``"resnet18,resnet50,vit_b_16,..."``)."""
    text = raw.strip()
    items = [str(x) for x in json.loads(text)] if text.startswith("[") else text.split(",")
    names = [n.strip() for n in items if n.strip().strip(".")]
    unknown = [n for n in names if n not in MODEL_SET]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; the catalogue: {', '.join(MODELS)}")
    if not names:
        raise ValueError("names no model")
    return tuple(dict.fromkeys(names))


#: How a variable's text becomes a setting, by the field's type (others: the text as is).
PARSERS: dict[str, Callable[[str], Any]] = {"int": pos_int, "float": pos_float, "bool": flag}
