"""The systemd units: content consistent with the settings, `systemd-analyze` clean and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from protocol.addresses import Addresses
from protocol.settings import Settings

from .conftest import REPO

pytestmark = pytest.mark.timeout(120)

UNITS = REPO / "deploy" / "systemd"
SUPERVISOR = UNITS / "rfuav-supervisor.service"
WEB = UNITS / "rfuav-web.service"
ENV_FILE = REPO / "deploy" / "rfuav.env"
INSTALLED_RFUAVD = "/opt/rfuav/venv/bin/rfuavd"
#: The daemon waits at most grace + 30 s for cancelled jobs before it gives up on them.
STOP_MARGIN = 30.0


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``: systemd keys may repeat (configparser refuses)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: assignment outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values, f"{key}= missing from [{section}]"
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span in the forms we use: ``30``, ``30s``, ``2min``, ``1min 30s``."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s|)", value):
        total += float(number) * {"": 1, "s": 1, "ms": 0.001, "min": 60}[unit]
    assert total > 0, f"cannot read time span {value!r}"
    return total


def unit_environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in unit["Service"].get("Environment", []):
        for item in line.split():
            key, _, value = item.partition("=")
            env[key] = value
    return env


def settings_of(unit: dict[str, dict[str, list[str]]]) -> Settings:
    """The settings the daemon would read under this unit with the example env file."""
    return Settings.from_env(env=unit_environment(unit), env_file=ENV_FILE)


@pytest.fixture(scope="module")
def supervisor_unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(SUPERVISOR)


@pytest.fixture(scope="module")
def web_unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(WEB)


def test_supervisor_is_a_notify_service_with_a_watchdog(supervisor_unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(supervisor_unit, "Type") == "notify"
    # Only the daemon's own datagrams count: a job must never be able to claim readiness.
    assert one(supervisor_unit, "NotifyAccess") == "main"
    assert seconds(one(supervisor_unit, "WatchdogSec")) >= 10
    assert one(supervisor_unit, "ExecStart") == f"{INSTALLED_RFUAVD} supervisor"
    assert one(supervisor_unit, "Restart") == "on-failure"


def test_stop_is_consistent_with_the_grace_period(supervisor_unit: dict[str, dict[str, list[str]]]) -> None:
    settings = settings_of(supervisor_unit)
    # SIGTERM to the daemon alone; it cancels jobs within the grace period, systemd's SIGKILL of
    # the whole cgroup is only the backstop after TimeoutStopSec.
    assert one(supervisor_unit, "KillMode") == "mixed"
    assert one(supervisor_unit, "KillSignal") == "SIGTERM"
    assert seconds(one(supervisor_unit, "TimeoutStopSec")) >= settings.grace_seconds + STOP_MARGIN
    # The same holds for the default when the env file does not set it.
    assert seconds(one(supervisor_unit, "TimeoutStopSec")) >= Settings().grace_seconds + STOP_MARGIN


def test_supervisor_owns_its_cgroup_subtree_and_reaches_gpus(supervisor_unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(supervisor_unit, "Delegate") == "yes"
    assert one(supervisor_unit, "ProtectControlGroups") == "no"
    assert "/sys/fs/cgroup" in supervisor_unit["Service"]["ReadWritePaths"]
    assert "PrivateDevices" not in supervisor_unit["Service"]
    assert one(supervisor_unit, "DevicePolicy") == "closed"
    assert any(v.startswith("char-nvidia") and v.endswith("rw") for v in supervisor_unit["Service"]["DeviceAllow"])


@pytest.mark.parametrize("path", [SUPERVISOR, WEB], ids=lambda p: p.name)
def test_hardening(path: Path) -> None:
    unit = parse_unit(path)
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "User": "rfuav",
    }
    for key, value in expected.items():
        assert one(unit, key) == value, key
    # PyTorch's CPU kernels need writable+executable mappings (pytorch issue 143651); web runs
    # no torch but shares the rule so that a later import cannot break it in production only.
    assert "MemoryDenyWriteExecute" not in unit["Service"]


def test_both_units_share_the_runtime_dir_and_home(
    supervisor_unit: dict[str, dict[str, list[str]]], web_unit: dict[str, dict[str, list[str]]]
) -> None:
    sup, web = settings_of(supervisor_unit), settings_of(web_unit)
    assert sup.runtime_dir == web.runtime_dir == Path("/run") / one(supervisor_unit, "RuntimeDirectory")
    assert sup.home == web.home == Path("/var/lib") / one(supervisor_unit, "StateDirectory")
    assert one(web_unit, "RuntimeDirectory") == one(supervisor_unit, "RuntimeDirectory")
    # 0700: no other user may connect to the control socket.
    assert one(supervisor_unit, "RuntimeDirectoryMode") == "0700"
    # The web unit must not delete the sockets' directory under a running supervisor.
    assert one(web_unit, "RuntimeDirectoryPreserve") == "yes"
    assert len(Addresses(sup.runtime_dir).events_out.removeprefix("ipc://")) < 107
    # Every data root outside the state directory is writable by the supervisor (jobs write there).
    writable = [Path(p.lstrip("-")) for p in supervisor_unit["Service"]["ReadWritePaths"]]
    for root in sup.data_roots:
        assert root == sup.home or root in writable, f"data root {root} not in ReadWritePaths"


def test_web_unit_follows_the_supervisor_without_binding_to_it(web_unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(web_unit, "ExecStart") == f"{INSTALLED_RFUAVD} web"
    assert "rfuav-supervisor.service" in one(web_unit, "Wants", "Unit")
    assert "rfuav-supervisor.service" in one(web_unit, "After", "Unit")
    # Web serves 503 while the supervisor restarts: no BindsTo/PartOf.
    assert "BindsTo" not in web_unit["Unit"] and "PartOf" not in web_unit["Unit"]
    assert "Delegate" not in web_unit["Service"]
    assert one(web_unit, "PrivateDevices") == "yes"
    assert one(web_unit, "ProtectControlGroups") == "yes"


def test_env_file_parses_as_settings() -> None:
    settings = Settings.from_env(env={}, env_file=ENV_FILE)
    assert settings.host == "127.0.0.1"
    assert settings.api_token == ""
    assert settings.grace_seconds == 10.0
    for line in ENV_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"RFUAV_[A-Z_]+=\S*", line), f"not a plain KEY=value line: {line!r}"


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _local_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's rfuavd (verify checks it exists)."""
    rfuavd = REPO / ".venv" / "bin" / "rfuavd"
    assert rfuavd.exists(), "rfuavd console script missing: pip install -e ."
    copies = []
    for unit in (SUPERVISOR, WEB):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_RFUAVD, str(rfuavd)))
        copies.append(copy)
    return copies


@needs_analyze
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    copies = _local_copies(tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(c) for c in copies)],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@needs_analyze
@pytest.mark.parametrize("path", [SUPERVISOR, WEB], ids=lambda p: p.name)
def test_security_exposure_at_most_3(path: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    assert float(match.group(1)) <= 3.0, proc.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    conf = REPO / "deploy" / "sysusers.d" / "rfuav.conf"
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(conf)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    for unit in (SUPERVISOR, WEB):
        user = one(parse_unit(unit), "User")
        assert user in users
        assert users[user][5] == "/var/lib/rfuav" and users[user][6] == "/usr/sbin/nologin"
