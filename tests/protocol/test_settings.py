"""Settings: each declared once (variable, default, description), read by ``from_env``, and the
README's table generated from the declarations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocol import settings as st
from protocol.settings import LIMIT_VARIABLES, Settings, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
DECLARED = [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


def _from(env: dict[str, str], tmp_path: Path) -> Settings:
    return Settings.from_env(env, env_file=tmp_path / "none")


def test_every_field_is_declared_once_with_its_variable() -> None:
    variables = [f.metadata["env"] for f in DECLARED] + list(LIMIT_VARIABLES)
    assert len(variables) == len(set(variables)) and all(v.startswith("RFUAV_") for v in variables)
    assert all(f.metadata["doc"] for f in DECLARED)
    assert {f.name for f in dataclasses.fields(Settings)} == {f.name for f in DECLARED} | {"limits"}
    rows = markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [
        v for f in dataclasses.fields(Settings) for v in (f.metadata.get("variables") or [f.metadata["env"]])
    ]


def test_readme_table_is_the_generated_one() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("| variable | default | meaning |")
    end = lines.index("", start)
    assert "\n".join(lines[start:end]) == markdown_table()


_SAMPLES = {"int": "7", "float": "0.25", "bool": "1", "str": "zz"}


@pytest.mark.parametrize("f", DECLARED, ids=lambda f: f.metadata["env"])
def test_every_variable_is_read(f: dataclasses.Field[object], tmp_path: Path) -> None:
    raw = {"start_mode": "cold", "home": str(tmp_path / "h"), "runtime_dir": str(tmp_path / "r"),
           "data_roots": "/a:/b", "url_allow_hosts": "h1,h2", "job_memory_mb": "777",
           "job_cpu_weight": "30"}.get(f.name) or _SAMPLES[str(f.type)]  # fmt: skip
    assert getattr(_from({f.metadata["env"]: raw}, tmp_path), f.name) != getattr(_from({}, tmp_path), f.name)


@pytest.mark.parametrize("f", [f for f in DECLARED if f.metadata["shown"] is None], ids=lambda f: f.metadata["env"])
def test_the_documented_default_is_the_default(f: dataclasses.Field[object], tmp_path: Path) -> None:
    shown = st._shown(f)
    assert (
        getattr(_from({f.metadata["env"]: shown}, tmp_path), f.name)
        == getattr(_from({}, tmp_path), f.name)
        == f.default
    )


def test_limit_variables(tmp_path: Path) -> None:
    for var, (device, task_type, _) in LIMIT_VARIABLES.items():
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
    ]:
        with pytest.raises(ValueError, match=fragment):
            _from(env, tmp_path)
