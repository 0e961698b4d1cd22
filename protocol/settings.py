"""Settings, read from ``RFUAV_*`` environment variables and an optional ``.env`` file.

The environment wins over the file. Each setting is declared once, as a field of ``Settings``:
its variable, default and description (``setting(...)``), and the original service's name for
it where it had one (``alias``: a seed ``.env`` copied as is configures the service; the rule is
``SEED_NAMES_RULE``). ``Settings.from_env`` reads them and the README's table is generated from
them (``python -m protocol.settings``: ``protocol.settings_table``). The per-device limits are one field fed by several
variables (``LIMIT_VARIABLES``, defaults ``DEFAULT_LIMITS``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol import __version__
from protocol.addresses import Addresses, default_runtime_dir
from protocol.values import PARSERS, models, origins, pos_int

#: Per-device, per-type concurrency limits (API.md §10); ``gpu`` applies to every ``cuda:N``.
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    "gpu": {"training": 1, "inference": 3, "preprocessing": 2, "diagnostic": 8, "serving": 4},
    "cpu": {"training": 2, "inference": 4, "preprocessing": 2, "diagnostic": 8, "serving": 8},
}

#: The limits a variable sets: variable -> (device, task type, description, the seed's name).
LIMIT_VARIABLES: dict[str, tuple[str, str, str, str | None]] = {
    "RFUAV_LIMIT_CPU_TRAINING": ("cpu", "training", "concurrent training jobs on the CPU", "MAX_TRAINING_CONCURRENT_CPU"),
    "RFUAV_LIMIT_CPU_INFERENCE": (
        "cpu", "inference", "concurrent inference jobs on the CPU", "MAX_INFERENCE_CONCURRENT_CPU",
    ),
    "RFUAV_LIMIT_CPU_PREPROCESSING": ("cpu", "preprocessing", "concurrent preprocessing jobs", None),
    "RFUAV_LIMIT_CPU_DIAGNOSTIC": ("cpu", "diagnostic", "concurrent diagnostic jobs", None),
    "RFUAV_LIMIT_CPU_SERVING": ("cpu", "serving", "serving replicas on the CPU (all deployments)", None),
    "RFUAV_LIMIT_GPU_SERVING": ("gpu", "serving", "serving replicas per GPU (all deployments)", None),
    "RFUAV_LIMIT_GPU_TRAINING": ("gpu", "training", "concurrent training jobs per GPU", "MAX_TRAINING_CONCURRENT_GPU"),
    "RFUAV_LIMIT_GPU_INFERENCE": (
        "gpu", "inference", "concurrent inference jobs per GPU", "MAX_INFERENCE_CONCURRENT_GPU",
    ),
}  # fmt: skip

#: How the original service's names are read (printed under the table, and in the README).
SEED_NAMES_RULE = (
    "After a `/`: the original service's name for the setting (its `.env` file), so that a seed `.env` "
    "copied as is configures this service. The `RFUAV_*` name wins when both are set, wherever each is set. "
    "A seed name is read from the `.env` file (`$RFUAV_ENV_FILE` or `./.env`), and from the process "
    "environment too, except the generic names marked `(.env)` (`HOST`, `PORT`, `DEBUG`, `ENVIRONMENT`, "
    "`APP_NAME`, `VERSION`): shells, containers and other programs set those for their own purposes. "
    "For systemd's `EnvironmentFile=` use the `RFUAV_*` names, or point `RFUAV_ENV_FILE` at the seed file."
)


def setting(
    default: Any, env: str, doc: str, *, shown: str | None = None, alias: str | None = None, generic: bool = False
) -> Any:
    """A ``Settings`` field: ``env`` is its variable, ``doc`` its description. ``shown`` is the
    default as the table shows it, where ``from_env`` derives it from other settings (``default``
    is then what a ``Settings`` built directly gets). ``alias``: the original service's name,
    read when ``env`` is not set; ``generic``: that name is read from the ``.env`` file only,
    never from the process environment (``SEED_NAMES_RULE``)."""
    return field(default=default, metadata={"env": env, "doc": doc, "shown": shown, "alias": alias, "generic": generic})


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
        Path("./var/run"),
        "RFUAV_RUNTIME_DIR",
        "IPC sockets (created 0700), the fork server's among them (`forkserver/`, emptied at each start)",
        shown="$RFUAV_HOME/run",
    )
    host: str = setting("127.0.0.1", "RFUAV_HOST", "HTTP bind address", alias="HOST", generic=True)
    port: int = setting(8000, "RFUAV_PORT", "HTTP port", alias="PORT", generic=True)
    web_workers: int = setting(
        1,
        "RFUAV_WEB_WORKERS",
        "uvicorn worker processes of web (1-64), each with its own read view, event socket and SSE clients; "
        "about one per core the web layer may use (the README's Deployment section says how to choose)",
    )
    web_view_tasks: int = setting(
        1000,
        "RFUAV_WEB_VIEW_TASKS",
        "final tasks each web worker keeps in its read view besides every live one, answering status reads "
        "and task lists without asking the supervisor (0-10000; 0: every read asks the supervisor)",
    )
    api_token: str = setting("", "RFUAV_API_TOKEN", "when set, `Authorization: Bearer <token>` is required on /api/v2")
    data_roots: tuple[Path, ...] = setting(
        (), "RFUAV_DATA_ROOTS", "`:`-separated roots every request path must resolve into", shown="$RFUAV_HOME"
    )
    max_body_bytes: int = setting(1 << 20, "RFUAV_MAX_BODY_BYTES", "largest accepted request body")
    cors_origins: tuple[str, ...] = setting(
        (),
        "RFUAV_CORS_ORIGINS",
        "comma-separated origins (`https://ui.example:8443`) whose browser pages may call the API, with "
        "credentials and the `Authorization` header (empty: none)",
    )
    app_name: str = setting(
        "RFUAV Model Service", "RFUAV_APP_NAME", "shown by /api/v1/info", alias="APP_NAME", generic=True
    )
    version: str = setting(
        __version__, "RFUAV_VERSION", "shown by /api/v1/info and /api/v1/health", shown="package version",
        alias="VERSION", generic=True,
    )  # fmt: skip
    environment: str = setting(
        "development", "RFUAV_ENVIRONMENT", "shown by /api/v1/info", alias="ENVIRONMENT", generic=True
    )
    debug: bool = setting(False, "RFUAV_DEBUG", "`1`: log level `DEBUG` (unless `RFUAV_LOG_LEVEL` is set)", alias="DEBUG",
                          generic=True)  # fmt: skip
    log_level: str = setting("INFO", "RFUAV_LOG_LEVEL", "daemon log level")
    supported_models: tuple[str, ...] = setting(
        (),
        "RFUAV_SUPPORTED_MODELS",
        "comma-separated models of the catalogue the service accepts (others: 400 naming `model`; empty: all)",
        alias="SUPPORTED_MODELS",
    )
    default_train_priority: int = setting(
        5, "RFUAV_DEFAULT_TRAIN_PRIORITY", "`priority` of a training request without one (1-10)",
        alias="DEFAULT_TRAIN_PRIORITY",
    )  # fmt: skip
    default_inference_priority: int = setting(
        3, "RFUAV_DEFAULT_INFERENCE_PRIORITY", "`priority` of an inference request without one (1-10)",
        alias="DEFAULT_INFERENCE_PRIORITY",
    )  # fmt: skip
    default_deployment: str = setting(
        "", "RFUAV_DEFAULT_DEPLOYMENT", "the deployment the article's `/predict` and `/predict_batch` use "
        "(empty: the only one)",
    )  # fmt: skip
    serving_max_body_bytes: int = setting(
        32 << 20, "RFUAV_SERVING_MAX_BODY_BYTES", "largest accepted prediction body (a batch of images or tensors)"
    )
    serving_max_pixels: int = setting(
        25_000_000, "RFUAV_SERVING_MAX_PIXELS", "an image with more pixels is refused before it is decoded"
    )
    serving_timeout: float = setting(
        30.0, "RFUAV_SERVING_TIMEOUT", "seconds a prediction may take before it is answered 503"
    )
    start_mode: str = setting(
        "warm", "RFUAV_START_MODE", "`warm`: fork jobs from a preloaded fork server; `cold`: a fresh interpreter each"
    )
    executor: str = setting(
        "local",
        "RFUAV_EXECUTOR",
        "`local`: jobs run on this host; `ray`: on a Ray cluster (README: Run on a Ray cluster)",
    )
    ray_address: str = setting(
        "", "RFUAV_RAY_ADDRESS", "with `ray`: the cluster's address (`ray://…` or `host:port`); empty: the supervisor "
        "starts and owns a local Ray instance",
    )  # fmt: skip
    ray_events: str = setting(
        "relay", "RFUAV_RAY_EVENTS", "with `ray`: `relay` (events go through each job's runner host: any network), "
        "`direct` (the runner connects to the supervisor's events socket: one host) or `tcp` (the runner connects "
        "to `RFUAV_EVENTS_TCP` over ZeroMQ TCP with CURVE keys: one port open from the nodes to the supervisor)",
    )  # fmt: skip
    events_tcp: str = setting(
        "", "RFUAV_EVENTS_TCP", "with `RFUAV_RAY_EVENTS=tcp`: `host:port` the supervisor binds for runners' events "
        "(CURVE: encrypted, only the keys of its live jobs are let in); an address of the supervisor's host every "
        "Ray node reaches, never `0.0.0.0` (port 0: any free port, said in the log)",
    )  # fmt: skip
    ray_admission: str = setting(
        "free", "RFUAV_RAY_ADMISSION", "with `ray`: `free` (a task goes to Ray only once one node's free resources "
        "cover it; until then it waits in our queue) or `ray` (as soon as our own limits allow: it may wait inside "
        "Ray, whose autoscaler then sees the demand; a cancel removes it from Ray at once)",
    )  # fmt: skip
    grace_seconds: float = setting(10.0, "RFUAV_GRACE_SECONDS", "SIGTERM → SIGKILL grace period when cancelling")
    queue_timeout: float = setting(
        0.0,
        "RFUAV_QUEUE_TIMEOUT",
        "seconds a task may wait in the queue for resources; past it the task fails (0: no limit)",
    )
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
    job_nice: int = setting(
        10,
        "RFUAV_JOB_NICE",
        "how much nicer than the supervisor a job's processes run (0-19; 0: as nice as the supervisor): with "
        "`RFUAV_JOB_CPU_WEIGHT`, and where the host offers no cgroup CPU controller, the daemons stay ahead of jobs",
    )
    cpu_batch_cap: int = setting(
        8, "RFUAV_CPU_BATCH_CAP", "training on the CPU clamps batch_size to this", alias="CPU_TRAINING_MAX_BATCH_SIZE"
    )
    cpu_worker_fraction: float = setting(
        0.5, "RFUAV_CPU_WORKER_FRACTION", "DataLoader workers on the CPU, as a fraction of cores",
        alias="CPU_TRAINING_MAX_WORKERS_RATIO",
    )  # fmt: skip
    cpu_thread_fraction: float = setting(
        0.5, "RFUAV_CPU_THREAD_FRACTION", "torch threads on the CPU, as a fraction of cores",
        alias="CPU_TRAINING_PYTORCH_THREADS_RATIO",
    )  # fmt: skip
    opencv_threads: int = setting(
        1, "RFUAV_OPENCV_THREADS", "OpenCV threads per job", alias="CPU_TRAINING_OPENCV_THREADS"
    )
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
        (default ``$RFUAV_ENV_FILE`` or ``./.env`` when it exists), each ``RFUAV_*`` name before
        the seed's name for it (``SEED_NAMES_RULE``). Raises ``ValueError`` naming the variable
        read when a value does not parse. An empty variable is an unset one."""
        env = dict(os.environ if env is None else env)
        file = env_file or env.get("RFUAV_ENV_FILE") or ".env"
        in_file = _parse_env_file(Path(file)) if Path(file).is_file() else {}
        merged, source = _resolve(env, in_file)

        def get(var: str, conv: Callable[[str], Any]) -> Any:
            raw = merged.get(var, "")
            if raw == "":
                return None
            try:
                return conv(raw)
            except ValueError as exc:
                raise ValueError(f"{source.get(var, var)}={raw!r}: {exc}") from None

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
            "cors_origins": get("RFUAV_CORS_ORIGINS", origins) or (),
            "supported_models": get("RFUAV_SUPPORTED_MODELS", models) or (),
        }
        if text("job_memory_mb").strip() in ("", "auto"):
            values["job_memory_mb"] = auto_job_memory_mb(merged)
        # Every other setting: parsed by its type, its default when unset.
        for name, f in declared.items():
            if name in values or name == "limits":
                continue
            value = get(f.metadata["env"], PARSERS.get(str(f.type), str))
            if value is not None:
                values[name] = value
        if not text("log_level") and values.get("debug"):
            values["log_level"] = "DEBUG"
        _check(values, source)
        limits = _default_limits()
        for var, (device, task_type, _, _) in LIMIT_VARIABLES.items():
            value = get(var, pos_int)
            if value is not None:
                limits[device][task_type] = value
        values["limits"] = limits
        return cls(**values)


def _aliases() -> dict[str, tuple[str, bool]]:
    """``RFUAV_*`` name -> (the seed's name, whether that name is read from the environment)."""
    out = {var: (alias, True) for var, (*_, alias) in LIMIT_VARIABLES.items() if alias}
    for f in fields(Settings):
        if f.metadata.get("alias"):
            out[f.metadata["env"]] = (f.metadata["alias"], not f.metadata["generic"])
    return out


def _resolve(env: Mapping[str, str], in_file: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Every variable's text by its ``RFUAV_*`` name (the environment over the file, then the
    seed's name: ``SEED_NAMES_RULE``), and the name each seed-named value was read from."""
    merged = {k: v for k, v in in_file.items() if k.startswith("RFUAV_")}
    merged.update({k: v for k, v in env.items() if k.startswith("RFUAV_")})
    source: dict[str, str] = {}
    for var, (alias, from_environ) in _aliases().items():
        if merged.get(var, "") != "":
            continue
        raw = (env.get(alias, "") if from_environ else "") or in_file.get(alias, "")
        if raw != "":
            merged[var], source[var] = raw, alias
    return merged, source


def _check(values: Mapping[str, Any], source: Mapping[str, str]) -> None:
    """Ranges that the type alone does not say; the message names the variable read."""
    ranges = {
        "job_cpu_weight": (1, 10_000),
        "job_nice": (0, 19),
        "web_workers": (1, 64),
        "web_view_tasks": (0, 10_000),
        "default_train_priority": (1, 10),
        "default_inference_priority": (1, 10),
    }
    for name, (low, high) in ranges.items():
        value = values.get(name, getattr(Settings, name))
        if not low <= value <= high:
            var = _env_of(name)
            raise ValueError(f"{source.get(var, var)}={value}: must be between {low} and {high}")
    for name, allowed in (("start_mode", ("warm", "cold")), ("executor", ("local", "ray")),
                          ("ray_events", ("relay", "direct", "tcp")), ("ray_admission", ("free", "ray"))):  # fmt: skip
        value = values.get(name, getattr(Settings, name))
        if value not in allowed:
            raise ValueError(f"{_env_of(name)}={value!r}: must be {' or '.join(repr(a) for a in allowed)}")
    if values.get("ray_events") == "tcp":
        tcp = str(values.get("events_tcp", ""))
        host, _, port = tcp.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"RFUAV_EVENTS_TCP={tcp!r}: RFUAV_RAY_EVENTS=tcp needs host:port (port 0: any free one)")


def _env_of(name: str) -> str:
    return next(str(f.metadata["env"]) for f in fields(Settings) if f.name == name)


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


if __name__ == "__main__":
    from protocol.settings_table import markdown_table

    print(markdown_table())
    print()
    print(SEED_NAMES_RULE)
