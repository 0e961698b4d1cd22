"""Settings: each declared once (variable, default, description), read by ``from_env``, and the
README's table generated from the declarations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocol import settings as st
from protocol.settings import LIMIT_VARIABLES, SEED_NAMES_RULE, Settings
from protocol.settings_table import markdown_table, shown_default

README = Path(__file__).resolve().parents[2] / "README.md"
SEED_ENV = Path(__file__).resolve().parents[1] / "support" / "seed.env"
DECLARED = [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


def _from(env: dict[str, str], tmp_path: Path) -> Settings:
    return Settings.from_env(env, env_file=tmp_path / "none")


def test_every_field_is_declared_once_with_its_variable() -> None:
    variables = [f.metadata["env"] for f in DECLARED] + list(LIMIT_VARIABLES)
    assert len(variables) == len(set(variables)) and all(v.startswith("RFUAV_") for v in variables)
    assert all(f.metadata["doc"] for f in DECLARED)
    assert {f.name for f in dataclasses.fields(Settings)} == {f.name for f in DECLARED} | {"limits"}
    aliases = [f.metadata["alias"] for f in DECLARED if f.metadata["alias"]]
    aliases += [alias for *_, alias in LIMIT_VARIABLES.values() if alias]
    assert len(aliases) == len(set(aliases)) and not any(a.startswith("RFUAV_") for a in aliases)
    rows = markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [
        v for f in dataclasses.fields(Settings) for v in (f.metadata.get("variables") or [f.metadata["env"]])
    ]


def test_readme_table_is_the_generated_one() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("| variable | default | meaning |")
    end = lines.index("", start)
    assert "\n".join(lines[start:end]) == markdown_table()
    # The seed names' rule, next to the table (the README wraps it).
    assert " ".join(SEED_NAMES_RULE.split()) in " ".join(README.read_text().split())


_SAMPLES = {"int": "7", "float": "0.25", "bool": "1", "str": "zz"}


@pytest.mark.parametrize("f", DECLARED, ids=lambda f: f.metadata["env"])
def test_every_variable_is_read(f: dataclasses.Field[object], tmp_path: Path) -> None:
    raw = {"start_mode": "cold", "home": str(tmp_path / "h"), "runtime_dir": str(tmp_path / "r"),
           "data_roots": "/a:/b", "url_allow_hosts": "h1,h2", "job_memory_mb": "777",
           "job_cpu_weight": "30", "cors_origins": "https://ui.example", "supported_models": "resnet18",
           "default_train_priority": "7", "default_inference_priority": "7", "executor": "ray",
           "ray_events": "direct", "ray_admission": "ray"}.get(f.name) or _SAMPLES[str(f.type)]  # fmt: skip
    assert getattr(_from({f.metadata["env"]: raw}, tmp_path), f.name) != getattr(_from({}, tmp_path), f.name)


@pytest.mark.parametrize("f", [f for f in DECLARED if f.metadata["shown"] is None], ids=lambda f: f.metadata["env"])
def test_the_documented_default_is_the_default(f: dataclasses.Field[object], tmp_path: Path) -> None:
    shown = shown_default(f)
    assert (
        getattr(_from({f.metadata["env"]: shown}, tmp_path), f.name)
        == getattr(_from({}, tmp_path), f.name)
        == f.default
    )


def test_limit_variables(tmp_path: Path) -> None:
    for var, (device, task_type, *_) in LIMIT_VARIABLES.items():
        assert _from({var: "9"}, tmp_path).limits[device][task_type] == 9
    with pytest.raises(ValueError, match="RFUAV_LIMIT_GPU_TRAINING='-1': must be >= 0"):
        _from({"RFUAV_LIMIT_GPU_TRAINING": "-1"}, tmp_path)


def test_derived_defaults_and_checks(tmp_path: Path) -> None:
    home = tmp_path / "h"
    s = _from({"RFUAV_HOME": str(home), "RFUAV_LIMIT_CPU_TRAINING": "1"}, tmp_path)
    assert s.data_roots == (home,) and s.runtime_dir == home.resolve() / "run"
    assert s.job_memory_mb == st.auto_job_memory_mb({"RFUAV_LIMIT_CPU_TRAINING": "1"})
    assert _from({"RFUAV_JOB_MEMORY_MB": "auto"}, tmp_path).job_memory_mb == st.auto_job_memory_mb({})
    assert _from({"RFUAV_URL_ALLOW_HOSTS": " A.org, ,b "}, tmp_path).url_allow_hosts == ("a.org", "b")
    assert _from({"RFUAV_DIAGNOSTIC": "off", "RFUAV_URL_ALLOW_LOOPBACK": "yes"}, tmp_path).url_allow_loopback
    for env, fragment in [
        ({"RFUAV_JOB_CPU_WEIGHT": "0"}, "RFUAV_JOB_CPU_WEIGHT=0: must be between 1 and 10000"),
        ({"RFUAV_JOB_CPU_WEIGHT": "10001"}, "between 1 and 10000"),
        ({"RFUAV_DIAGNOSTIC": "maybe"}, "RFUAV_DIAGNOSTIC='maybe': must be 1 or 0"),
        ({"RFUAV_JOB_MEMORY_MB": "lots"}, "RFUAV_JOB_MEMORY_MB='lots'"),
        ({"RFUAV_PORT": "-1"}, "RFUAV_PORT='-1': must be >= 0"),
        ({"RFUAV_RAY_ADMISSION": "all"}, "RFUAV_RAY_ADMISSION='all': must be 'free' or 'ray'"),
        ({"RFUAV_RAY_EVENTS": "tcp"}, "RFUAV_EVENTS_TCP='': RFUAV_RAY_EVENTS=tcp needs host:port"),
        ({"RFUAV_RAY_EVENTS": "tcp", "RFUAV_EVENTS_TCP": "10.0.0.5"}, "RFUAV_EVENTS_TCP='10.0.0.5'"),
        ({"RFUAV_RAY_EVENTS": "tcp", "RFUAV_EVENTS_TCP": "10.0.0.5:70000"}, "needs host:port"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            _from(env, tmp_path)
    tcp = _from({"RFUAV_RAY_EVENTS": "tcp", "RFUAV_EVENTS_TCP": "10.0.0.5:5557"}, tmp_path)
    assert (tcp.ray_events, tcp.events_tcp) == ("tcp", "10.0.0.5:5557")


# -- the original service's names ------------------------------------------------------------------
def _aliases() -> list[tuple[str, str, bool]]:
    """(RFUAV_* name, seed name, generic) of every setting the seed named."""
    out = [(f.metadata["env"], f.metadata["alias"], f.metadata["generic"]) for f in DECLARED if f.metadata["alias"]]
    return out + [(var, alias, False) for var, (*_, alias) in LIMIT_VARIABLES.items() if alias]


def test_the_seed_env_file_copied_as_is_configures_the_service(tmp_path: Path) -> None:
    s = Settings.from_env({}, env_file=SEED_ENV)
    assert (s.app_name, s.version, s.environment) == ("RFUAV Model Service", "1.0.0", "production")
    assert (s.host, s.port, s.debug, s.log_level) == ("0.0.0.0", 8000, False, "INFO")
    assert s.limits["gpu"]["training"] == 1 and s.limits["gpu"]["inference"] == 3
    assert s.limits["cpu"]["training"] == 2 and s.limits["cpu"]["inference"] == 4
    assert (s.cpu_batch_cap, s.cpu_worker_fraction, s.cpu_thread_fraction, s.opencv_threads) == (8, 0.5, 0.5, 1)
    assert (s.default_train_priority, s.default_inference_priority) == (5, 3)
    # The seed README's "..." placeholder names no model.
    assert s.supported_models == ("resnet18", "resnet50", "vit_b_16")


def test_a_seed_env_in_the_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        SEED_ENV.read_text().replace("MAX_TRAINING_CONCURRENT_CPU=2", "MAX_TRAINING_CONCURRENT_CPU=1")
    )
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert (s.limits["cpu"]["training"], s.environment, s.host) == (1, "production", "0.0.0.0")


@pytest.mark.parametrize(("var", "alias", "generic"), _aliases(), ids=lambda v: str(v))
def test_each_seed_name_is_read_and_the_rfuav_name_wins(var: str, alias: str, generic: bool, tmp_path: Path) -> None:
    values = {"SUPPORTED_MODELS": ("alexnet", "vgg11"), "VERSION": ("9.9.9", "8.8.8"), "DEBUG": ("1", "0")}
    seed_value, ours = values.get(alias, ("7", "6"))
    env_file = tmp_path / "seed.env"
    env_file.write_text(f"{alias}={seed_value}\n")
    from_file = Settings.from_env({}, env_file=env_file)
    default = Settings.from_env({}, env_file=tmp_path / "none")
    assert from_file != default
    # The RFUAV_* name wins, from the environment or from the same file.
    assert Settings.from_env({var: ours}, env_file=env_file) == Settings.from_env(
        {var: ours}, env_file=tmp_path / "none"
    )
    env_file.write_text(f"{alias}={seed_value}\n{var}={ours}\n")
    assert Settings.from_env({}, env_file=env_file) == Settings.from_env({var: ours}, env_file=tmp_path / "none")
    # From the process environment only where the name is not a generic one (HOST, PORT, DEBUG...).
    from_environ = Settings.from_env({alias: seed_value}, env_file=tmp_path / "none")
    assert from_environ == (default if generic else from_file)


def test_generic_seed_names_in_the_environment_are_left_alone(tmp_path: Path) -> None:
    env = {"HOST": "myhost", "PORT": "x", "DEBUG": "maybe", "ENVIRONMENT": "ci", "VERSION": "v", "APP_NAME": "sh"}
    assert Settings.from_env(env, env_file=tmp_path / "none") == Settings.from_env({}, env_file=tmp_path / "none")


def test_seed_values_are_checked_under_the_name_read(tmp_path: Path) -> None:
    env_file = tmp_path / "seed.env"
    for line, fragment in [
        ("MAX_TRAINING_CONCURRENT_GPU=-1", "MAX_TRAINING_CONCURRENT_GPU='-1': must be >= 0"),
        ("PORT=eighty", "PORT='eighty'"),
        ("DEFAULT_TRAIN_PRIORITY=11", "DEFAULT_TRAIN_PRIORITY=11: must be between 1 and 10"),
        ("SUPPORTED_MODELS=resnet18,resnet5O", "SUPPORTED_MODELS='resnet18,resnet5O': unknown model(s) resnet5O"),
        ("SUPPORTED_MODELS=...", "names no model"),
    ]:
        env_file.write_text(line + "\n")
        with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            Settings.from_env({}, env_file=env_file)
    with pytest.raises(ValueError, match="RFUAV_DEFAULT_INFERENCE_PRIORITY=0: must be between 1 and 10"):
        _from({"RFUAV_DEFAULT_INFERENCE_PRIORITY": "0"}, tmp_path)


def test_supported_models_cors_origins_and_debug(tmp_path: Path) -> None:
    assert _from({"RFUAV_SUPPORTED_MODELS": '["vgg11", "alexnet", "vgg11"]'}, tmp_path).supported_models == (
        "vgg11", "alexnet",
    )  # fmt: skip
    assert _from({"RFUAV_SUPPORTED_MODELS": " resnet18 , "}, tmp_path).supported_models == ("resnet18",)
    s = _from({"RFUAV_CORS_ORIGINS": "https://UI.example:8443/, http://localhost:3000,"}, tmp_path)
    assert s.cors_origins == ("https://ui.example:8443", "http://localhost:3000")
    for bad in ("*", "ui.example", "https://ui.example/app", "ftp://x"):
        with pytest.raises(ValueError, match="RFUAV_CORS_ORIGINS=.*is not an origin"):
            _from({"RFUAV_CORS_ORIGINS": bad}, tmp_path)
    assert _from({"RFUAV_DEBUG": "true"}, tmp_path).log_level == "DEBUG"
    assert _from({"RFUAV_DEBUG": "1", "RFUAV_LOG_LEVEL": "WARNING"}, tmp_path).log_level == "WARNING"
