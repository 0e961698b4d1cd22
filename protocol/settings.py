"""Settings, read from ``RFUAV_*`` environment variables and an optional ``.env`` file.

The environment wins over the file. Each setting is declared once, as a field of ``Settings``:
its variable, default and description (``setting(...)``); ``Settings.from_env`` reads them and
the README's table is generated from them (``python -m protocol.settings``). The per-device
limits are one field fed by several variables (``LIMIT_VARIABLES``, defaults ``DEFAULT_LIMITS``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol.addresses import Addresses, default_runtime_dir

#: Per-device, per-type concurrency limits (API.md §10); ``gpu`` applies to every ``cuda:N``.
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    "gpu": {"training": 1, "inference": 3, "preprocessing": 2, "diagnostic": 8},
    "cpu": {"training": 2, "inference": 4, "preprocessing": 2, "diagnostic": 8},
}

#: The limits a variable sets: variable -> (device, task type, description).
LIMIT_VARIABLES: dict[str, tuple[str, str, str]] = {
    "RFUAV_LIMIT_CPU_TRAINING": ("cpu", "training", "concurrent training jobs on the CPU"),
    "RFUAV_LIMIT_CPU_INFERENCE": ("cpu", "inference", "concurrent inference jobs on the CPU"),
    "RFUAV_LIMIT_CPU_PREPROCESSING": ("cpu", "preprocessing", "concurrent preprocessing jobs"),
    "RFUAV_LIMIT_CPU_DIAGNOSTIC": ("cpu", "diagnostic", "concurrent diagnostic jobs"),
    "RFUAV_LIMIT_GPU_TRAINING": ("gpu", "training", "concurrent training jobs per GPU"),
    "RFUAV_LIMIT_GPU_INFERENCE": ("gpu", "inference", "concurrent inference jobs per GPU"),
}


def setting(default: Any, env: str, doc: str, *, shown: str | None = None) -> Any:
    """A ``Settings`` field: ``env`` is its variable, ``doc`` its description. ``shown`` is the
    default as the table shows it, where ``from_env`` derives it from other settings (``default``
    is then what a ``Settings`` built directly gets)."""
    return field(default=default, metadata={"env": env, "doc": doc, "shown": shown})


def _default_limits() -> dict[str, dict[str, int]]:
    return {device: dict(types) for device, types in DEFAULT_LIMITS.items()}


def _parse_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


@dataclass(frozen=True)
class Settings:
    home: Path = setting(
        Path("./var"), "RFUAV_HOME", "state: SQLite store, task directories, default data root", shown="./var"
    )
    runtime_dir: Path = setting(
        Path("./var/run"), "RFUAV_RUNTIME_DIR", "IPC sockets (created 0700)", shown="$RFUAV_HOME/run"
    )
    host: str = setting("127.0.0.1", "RFUAV_HOST", "HTTP bind address")
    port: int = setting(8000, "RFUAV_PORT", "HTTP port")
    api_token: str = setting("", "RFUAV_API_TOKEN", "when set, `Authorization: Bearer <token>` is required on /api/v2")
    data_roots: tuple[Path, ...] = setting(
        (), "RFUAV_DATA_ROOTS", "`:`-separated roots every request path must resolve into", shown="$RFUAV_HOME"
    )
    max_body_bytes: int = setting(1 << 20, "RFUAV_MAX_BODY_BYTES", "largest accepted request body")
    environment: str = setting("development", "RFUAV_ENVIRONMENT", "shown by /api/v1/info")
    log_level: str = setting("INFO", "RFUAV_LOG_LEVEL", "daemon log level")
    start_mode: str = setting(
        "warm", "RFUAV_START_MODE", "`warm`: fork jobs from a preloaded fork server; `cold`: a fresh interpreter each"
    )
    grace_seconds: float = setting(10.0, "RFUAV_GRACE_SECONDS", "SIGTERM → SIGKILL grace period when cancelling")
    limits: dict[str, dict[str, int]] = field(default_factory=_default_limits, metadata={"variables": LIMIT_VARIABLES})
    job_memory_mb: int = setting(
        8192,
        "RFUAV_JOB_MEMORY_MB",
        "cgroup memory limit per job in MiB (0: none; `auto`: the host's memory less 1 GiB for the daemons, "
        "shared by the CPU job slots, at least 512)",
        shown="auto",
    )
    job_cpus: float = setting(0.0, "RFUAV_JOB_CPUS", "cgroup CPU quota per job in cores (0: none)")
    job_pids: int = setting(512, "RFUAV_JOB_PIDS", "cgroup pids limit per job (0: none)")
    job_cpu_weight: int = setting(
        20,
        "RFUAV_JOB_CPU_WEIGHT",
        "CPU weight of jobs beside the daemons' 100 (1-10000; cgroup v2 `cpu.weight`, v1 `cpu.shares` scaled): "
        "the control plane stays fast while jobs saturate the CPU",
    )
    cpu_batch_cap: int = setting(8, "RFUAV_CPU_BATCH_CAP", "training on the CPU clamps batch_size to this")
    cpu_worker_fraction: float = setting(
        0.5, "RFUAV_CPU_WORKER_FRACTION", "DataLoader workers on the CPU, as a fraction of cores"
    )
    cpu_thread_fraction: float = setting(
        0.5, "RFUAV_CPU_THREAD_FRACTION", "torch threads on the CPU, as a fraction of cores"
    )
    opencv_threads: int = setting(1, "RFUAV_OPENCV_THREADS", "OpenCV threads per job")
    upload_url: str = setting("", "RFUAV_UPLOAD_URL", "default satellite upload endpoint")
    upload_file_field: str = setting("file", "RFUAV_UPLOAD_FILE_FIELD", "multipart field of the file part")
    upload_label_field: str = setting(
        "businessLabel", "RFUAV_UPLOAD_LABEL_FIELD", "multipart field of the business label"
    )
    upload_type_field: str = setting("fileType", "RFUAV_UPLOAD_TYPE_FIELD", "multipart field of the file type")
    upload_auth_header: str = setting(
        "Authorization", "RFUAV_UPLOAD_AUTH_HEADER", "header carrying the request's token"
    )
    upload_retries: int = setting(3, "RFUAV_UPLOAD_RETRIES", "retries per file after the first attempt")
    download_max_bytes: int = setting(2 << 30, "RFUAV_DOWNLOAD_MAX_BYTES", "largest download")
    download_timeout: float = setting(600.0, "RFUAV_DOWNLOAD_TIMEOUT", "seconds a download may take in all")
    url_allow_hosts: tuple[str, ...] = setting(
        (), "RFUAV_URL_ALLOW_HOSTS", "comma-separated host allowlist for URLs (empty: any host the address rules allow)"
    )
    url_allow_loopback: bool = setting(
        False,
        "RFUAV_URL_ALLOW_LOOPBACK",
        "`1`: URLs may reach loopback addresses (127.0.0.0/8, ::1); 0.0.0.0, :: and link-local never",
    )
    unzip_max_bytes: int = setting(8 << 30, "RFUAV_UNZIP_MAX_BYTES", "largest total size a zip may expand to")
    unzip_max_ratio: float = setting(200.0, "RFUAV_UNZIP_MAX_RATIO", "largest compression ratio a zip may have")
    unzip_max_entries: int = setting(200_000, "RFUAV_UNZIP_MAX_ENTRIES", "most entries a zip may have")
    sse_heartbeat: float = setting(15.0, "RFUAV_SSE_HEARTBEAT", "seconds between SSE comment heartbeats when idle")
    sse_queue: int = setting(
        10_000, "RFUAV_SSE_QUEUE", "events buffered per SSE client before it is dropped (it resumes losslessly)"
    )
    diagnostic: bool = setting(
        False, "RFUAV_DIAGNOSTIC", "`1`: serve the diagnostic job type (tests, benchmarks, operators); off: 404"
    )

    @property
    def addresses(self) -> Addresses:
        return Addresses(self.runtime_dir)

    @property
    def db_path(self) -> Path:
        return self.home / "rfuav.sqlite3"

    @property
    def tasks_dir(self) -> Path:
        return self.home / "tasks"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Read settings from ``env`` (default ``os.environ``) over ``env_file``
        (default ``$RFUAV_ENV_FILE`` or ``./.env`` when it exists). Raises ``ValueError``
        naming the variable when a value does not parse. An empty variable is an unset one."""
        env = dict(os.environ if env is None else env)
        file = env_file or env.get("RFUAV_ENV_FILE") or ".env"
        merged: dict[str, str] = {}
        if Path(file).is_file():
            merged.update(_parse_env_file(Path(file)))
        merged.update({k: v for k, v in env.items() if k.startswith("RFUAV_")})

        def get(var: str, conv: Callable[[str], Any]) -> Any:
            raw = merged.get(var, "")
            if raw == "":
                return None
            try:
                return conv(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: {exc}") from None

        declared = {f.name: f for f in fields(cls)}

        def text(name: str) -> str:
            return merged.get(declared[name].metadata["env"], "")

        # Settings whose default or form derives from others (``shown`` in the table).
        home = Path(text("home") or cls.home).absolute()
        values: dict[str, Any] = {
            "home": home,
            "runtime_dir": Path(text("runtime_dir")) if text("runtime_dir") else default_runtime_dir(home),
            "data_roots": tuple(Path(p).absolute() for p in text("data_roots").split(":") if p) or (home,),
            "url_allow_hosts": tuple(h.strip().lower() for h in text("url_allow_hosts").split(",") if h.strip()),
        }
        if text("job_memory_mb").strip() in ("", "auto"):
            values["job_memory_mb"] = auto_job_memory_mb(merged)
        # Every other setting: parsed by its type, its default when unset.
        for name, f in declared.items():
            if name in values or name == "limits":
                continue
            value = get(f.metadata["env"], _PARSERS.get(str(f.type), str))
            if value is not None:
                values[name] = value
        weight = values.get("job_cpu_weight", cls.job_cpu_weight)
        if not 1 <= weight <= 10_000:
            raise ValueError(f"RFUAV_JOB_CPU_WEIGHT={weight}: must be between 1 and 10000")
        mode = values.get("start_mode", cls.start_mode)
        if mode not in ("warm", "cold"):
            raise ValueError(f"RFUAV_START_MODE={mode!r}: must be 'warm' or 'cold'")
        limits = _default_limits()
        for var, (device, task_type, _) in LIMIT_VARIABLES.items():
            value = get(var, _pos_int)
            if value is not None:
                limits[device][task_type] = value
        values["limits"] = limits
        return cls(**values)


def host_memory_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def auto_job_memory_mb(env: Mapping[str, str]) -> int:
    """The default per-job memory limit: what the host has, less 1 GiB kept for the daemons,
    split over the CPU slots for real jobs (training, inference, preprocessing), so that the
    jobs together can never take the machine (a limit of a third of it per job could)."""
    slots = 0
    for task_type in ("training", "inference", "preprocessing"):
        raw = env.get(f"RFUAV_LIMIT_CPU_{task_type.upper()}", "").strip()
        slots += int(raw) if raw.isascii() and raw.isdigit() else DEFAULT_LIMITS["cpu"][task_type]
    return max(512, (host_memory_mb() - 1024) // max(1, slots))


def _pos_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def _pos_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


#: How a variable's text becomes a setting, by the field's type (others: the text as is).
_PARSERS: dict[str, Callable[[str], Any]] = {"int": _pos_int, "float": _pos_float, "bool": _flag}


def _shown(f: Field[Any]) -> str:
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


def markdown_table() -> str:
    """The README's table: every variable with its default and description, in field order."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        if "variables" in f.metadata:
            for var, (device, task_type, doc) in f.metadata["variables"].items():
                rows.append(f"| `{var}` | `{DEFAULT_LIMITS[device][task_type]}` | {doc} |")
        else:
            rows.append(f"| `{f.metadata['env']}` | `{_shown(f)}` | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
