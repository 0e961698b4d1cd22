"""The README's table of settings, generated from their declarations (``protocol.settings``):
``python -m protocol.settings`` prints it, ``tests/protocol/test_settings.py`` checks the README
holds it as printed."""

from __future__ import annotations

from dataclasses import Field, fields
from typing import Any

from protocol.settings import DEFAULT_LIMITS, Settings


def shown_default(f: Field[Any]) -> str:
    """A field's default as the table shows it (as one would write it in the variable)."""
    if f.metadata["shown"] is not None:
        return str(f.metadata["shown"])
    default = f.default
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def _names(var: str, alias: str | None, generic: bool = False) -> str:
    """The table's variable cell: the ``RFUAV_*`` name, then the seed's (``SEED_NAMES_RULE``)."""
    if not alias:
        return f"`{var}`"
    return f"`{var}` / `{alias}`" + (" (.env)" if generic else "")


def markdown_table() -> str:
    """The README's table: every variable with its default and description, in field order."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        if "variables" in f.metadata:
            for var, (device, task_type, doc, alias) in f.metadata["variables"].items():
                rows.append(f"| {_names(var, alias)} | `{DEFAULT_LIMITS[device][task_type]}` | {doc} |")
        else:
            names = _names(f.metadata["env"], f.metadata["alias"], f.metadata["generic"])
            rows.append(f"| {names} | `{shown_default(f)}` | {f.metadata['doc']} |")
    return "\n".join(rows)
