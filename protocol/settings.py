"""Settings, read from ``RFUAV_*`` environment variables and an optional ``.env`` file.

The environment wins over the file. ``SETTINGS_DOC`` documents every variable with its
default; the README's table is generated from it (``python -m protocol.settings``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol.addresses import Addresses, default_runtime_dir

#: Per-device, per-type concurrency limits (API.md §10); ``gpu`` applies to every ``cuda:N``.
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    "gpu": {"training": 1, "inference": 3, "preprocessing": 2, "diagnostic": 8},
    "cpu": {"training": 2, "inference": 4, "preprocessing": 2, "diagnostic": 8},
}

# name -> (env var, default as text, description)
SETTINGS_DOC: dict[str, tuple[str, str, str]] = {
    "home": ("RFUAV_HOME", "./var", "state: SQLite store, task directories, default data root"),
    "runtime_dir": ("RFUAV_RUNTIME_DIR", "$RFUAV_HOME/run", "IPC sockets (created 0700)"),
    "host": ("RFUAV_HOST", "127.0.0.1", "HTTP bind address"),
    "port": ("RFUAV_PORT", "8000", "HTTP port"),
    "api_token": ("RFUAV_API_TOKEN", "", "when set, `Authorization: Bearer <token>` is required on /api/v2"),
    "data_roots": ("RFUAV_DATA_ROOTS", "$RFUAV_HOME", "`:`-separated roots every request path must resolve into"),
    "max_body_bytes": ("RFUAV_MAX_BODY_BYTES", "1048576", "largest accepted request body"),
    "environment": ("RFUAV_ENVIRONMENT", "development", "shown by /api/v1/info"),
    "log_level": ("RFUAV_LOG_LEVEL", "INFO", "daemon log level"),
    "start_mode": ("RFUAV_START_MODE", "warm", "`warm`: fork jobs from a preloaded fork server; `cold`: a fresh interpreter each"),
    "grace_seconds": ("RFUAV_GRACE_SECONDS", "10", "SIGTERM → SIGKILL grace period when cancelling"),
    "limits_cpu_training": ("RFUAV_LIMIT_CPU_TRAINING", "2", "concurrent training jobs on the CPU"),
    "limits_cpu_inference": ("RFUAV_LIMIT_CPU_INFERENCE", "4", "concurrent inference jobs on the CPU"),
    "limits_cpu_preprocessing": ("RFUAV_LIMIT_CPU_PREPROCESSING", "2", "concurrent preprocessing jobs"),
    "limits_cpu_diagnostic": ("RFUAV_LIMIT_CPU_DIAGNOSTIC", "8", "concurrent diagnostic jobs"),
    "limits_gpu_training": ("RFUAV_LIMIT_GPU_TRAINING", "1", "concurrent training jobs per GPU"),
    "limits_gpu_inference": ("RFUAV_LIMIT_GPU_INFERENCE", "3", "concurrent inference jobs per GPU"),
    "job_memory_mb": (
        "RFUAV_JOB_MEMORY_MB",
        "auto",
        "cgroup memory limit per job in MiB (0: none; `auto`: the host's memory less 1 GiB for the daemons, "
        "shared by the CPU job slots, at least 512)",
    ),
    "job_cpus": ("RFUAV_JOB_CPUS", "0", "cgroup CPU quota per job in cores (0: none)"),
    "job_pids": ("RFUAV_JOB_PIDS", "512", "cgroup pids limit per job (0: none)"),
    "job_cpu_weight": (
        "RFUAV_JOB_CPU_WEIGHT",
        "20",
        "CPU weight of jobs beside the daemons' 100 (1-10000; cgroup v2 `cpu.weight`, v1 `cpu.shares` scaled): "
        "the control plane stays fast while jobs saturate the CPU",
    ),
    "cpu_batch_cap": ("RFUAV_CPU_BATCH_CAP", "8", "training on the CPU clamps batch_size to this"),
    "cpu_worker_fraction": ("RFUAV_CPU_WORKER_FRACTION", "0.5", "DataLoader workers on the CPU, as a fraction of cores"),
    "cpu_thread_fraction": ("RFUAV_CPU_THREAD_FRACTION", "0.5", "torch threads on the CPU, as a fraction of cores"),
    "opencv_threads": ("RFUAV_OPENCV_THREADS", "1", "OpenCV threads per job"),
    "upload_url": ("RFUAV_UPLOAD_URL", "", "default satellite upload endpoint"),
    "upload_file_field": ("RFUAV_UPLOAD_FILE_FIELD", "file", "multipart field of the file part"),
    "upload_label_field": ("RFUAV_UPLOAD_LABEL_FIELD", "businessLabel", "multipart field of the business label"),
    "upload_type_field": ("RFUAV_UPLOAD_TYPE_FIELD", "fileType", "multipart field of the file type"),
    "upload_auth_header": ("RFUAV_UPLOAD_AUTH_HEADER", "Authorization", "header carrying the request's token"),
    "upload_retries": ("RFUAV_UPLOAD_RETRIES", "3", "retries per file after the first attempt"),
    "download_max_bytes": ("RFUAV_DOWNLOAD_MAX_BYTES", "2147483648", "largest download"),
    "download_timeout": ("RFUAV_DOWNLOAD_TIMEOUT", "600", "seconds a download may take in all"),
    "url_allow_hosts": ("RFUAV_URL_ALLOW_HOSTS", "", "comma-separated host allowlist for URLs (empty: any host the address rules allow)"),
    "url_allow_loopback": ("RFUAV_URL_ALLOW_LOOPBACK", "0", "`1`: URLs may reach loopback addresses (127.0.0.0/8, ::1); 0.0.0.0, :: and link-local never"),
    "unzip_max_bytes": ("RFUAV_UNZIP_MAX_BYTES", "8589934592", "largest total size a zip may expand to"),
    "unzip_max_ratio": ("RFUAV_UNZIP_MAX_RATIO", "200", "largest compression ratio a zip may have"),
    "unzip_max_entries": ("RFUAV_UNZIP_MAX_ENTRIES", "200000", "most entries a zip may have"),
    "sse_heartbeat": ("RFUAV_SSE_HEARTBEAT", "15", "seconds between SSE comment heartbeats when idle"),
    "sse_queue": ("RFUAV_SSE_QUEUE", "10000", "events buffered per SSE client before it is dropped (it resumes losslessly)"),
    "diagnostic": ("RFUAV_DIAGNOSTIC", "0", "`1`: serve the diagnostic job type (tests, benchmarks, operators); off: 404"),
}


def _parse_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


@dataclass(frozen=True)
class Settings:
    home: Path = Path("./var")
    runtime_dir: Path = Path("./var/run")
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str = ""
    data_roots: tuple[Path, ...] = ()
    max_body_bytes: int = 1 << 20
    environment: str = "development"
    log_level: str = "INFO"
    start_mode: str = "warm"
    grace_seconds: float = 10.0
    limits: dict[str, dict[str, int]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_LIMITS.items()})
    job_memory_mb: int = 8192
    job_cpus: float = 0.0
    job_pids: int = 512
    job_cpu_weight: int = 20
    cpu_batch_cap: int = 8
    cpu_worker_fraction: float = 0.5
    cpu_thread_fraction: float = 0.5
    opencv_threads: int = 1
    upload_url: str = ""
    upload_file_field: str = "file"
    upload_label_field: str = "businessLabel"
    upload_type_field: str = "fileType"
    upload_auth_header: str = "Authorization"
    upload_retries: int = 3
    download_max_bytes: int = 2 << 30
    download_timeout: float = 600.0
    url_allow_hosts: tuple[str, ...] = ()
    url_allow_loopback: bool = False
    unzip_max_bytes: int = 8 << 30
    unzip_max_ratio: float = 200.0
    unzip_max_entries: int = 200_000
    sse_heartbeat: float = 15.0
    sse_queue: int = 10_000
    diagnostic: bool = False

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
        naming the variable when a value does not parse."""
        env = dict(os.environ if env is None else env)
        file = env_file or env.get("RFUAV_ENV_FILE") or ".env"
        merged: dict[str, str] = {}
        if Path(file).is_file():
            merged.update(_parse_env_file(Path(file)))
        merged.update({k: v for k, v in env.items() if k.startswith("RFUAV_")})

        def get(name: str, conv: Callable[[str], Any]) -> Any:
            var, default, _ = SETTINGS_DOC[name]
            raw = merged.get(var, "")
            if raw == "":
                return None
            try:
                return conv(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: {exc}") from None

        values: dict[str, Any] = {}
        home = Path(merged.get("RFUAV_HOME") or "./var").absolute()
        values["home"] = home
        values["runtime_dir"] = Path(merged["RFUAV_RUNTIME_DIR"]) if merged.get("RFUAV_RUNTIME_DIR") else default_runtime_dir(home)
        roots = merged.get("RFUAV_DATA_ROOTS", "")
        values["data_roots"] = tuple(Path(p).absolute() for p in roots.split(":") if p) or (home,)
        memory = merged.get("RFUAV_JOB_MEMORY_MB", "").strip()
        if memory in ("", "auto"):
            merged["RFUAV_JOB_MEMORY_MB"] = str(auto_job_memory_mb(merged))
        hosts = merged.get("RFUAV_URL_ALLOW_HOSTS", "")
        values["url_allow_hosts"] = tuple(h.strip().lower() for h in hosts.split(",") if h.strip())
        typed = {f.name: f.type for f in fields(cls)}
        for name in SETTINGS_DOC:
            if name in values or name.startswith("limits_"):
                continue
            kind = str(typed[name])
            conv: Callable[[str], Any] = {"int": _pos_int, "float": _pos_float, "bool": _flag}.get(kind, str)
            value = get(name, conv)
            if value is not None:
                values[name] = value
        if not 1 <= values.get("job_cpu_weight", 20) <= 10_000:
            raise ValueError(f"RFUAV_JOB_CPU_WEIGHT={values['job_cpu_weight']}: must be between 1 and 10000")
        if values.get("start_mode", "warm") not in ("warm", "cold"):
            raise ValueError(f"RFUAV_START_MODE={values['start_mode']!r}: must be 'warm' or 'cold'")
        limits = {k: dict(v) for k, v in DEFAULT_LIMITS.items()}
        for name in SETTINGS_DOC:
            if name.startswith("limits_"):
                _, device, task_type = name.split("_", 2)
                value = get(name, _pos_int)
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


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var, default, doc in SETTINGS_DOC.values():
        rows.append(f"| `{var}` | `{default}` | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
