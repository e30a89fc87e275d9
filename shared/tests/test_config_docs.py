"""The settings tables in the READMEs are current and name variables the code really reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import config_docs
from conveyor.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
TARGETS = config_docs.readme_targets(ROOT)


def test_every_readme_table_is_current() -> None:
    assert {p.parent.name for p, _ in TARGETS} >= {
        "shared",
        "version-db",
        "changelog-listener",
        "deployer",
        "notifier",
        "firewall-agent",
    }
    assert config_docs.main(["--check", "--root", str(ROOT)]) == 0, "run `make docs`"


def test_check_reports_a_stale_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path, _ in TARGETS:
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    stale = tmp_path / "services" / "deployer" / "README.md"
    stale.write_text(stale.read_text().replace("`8100`", "`9999`"))
    assert config_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "services/deployer/README.md" in capsys.readouterr().err


def different(current: object, name: str) -> str:
    """A valid value for the variable that differs from ``current``."""
    if isinstance(current, bool):
        return "false" if current else "true"
    if isinstance(current, int):
        return str(current + 1)
    if isinstance(current, float):
        return str(current + 1.5)
    if isinstance(current, dict):
        if name == "firewall_policy":
            return '{"qa": {"roles": ["admin"], "max_lease_s": 60}}'
        if name == "users":  # a role both the deployer and the notifier know
            return '{"ada": {"token": "a-token", "role": "reader"}}'
        return '{"reader": ["a-token"]}' if name == "api_tokens" else '{"dev": "amqp://u:p@h/x"}'
    if isinstance(current, list):
        if name == "packages":
            return '[{"name": "web", "root": "/srv/web", "role": "target"}]'
        if name == "ctl_sudo_defaults":
            return '["log_output"]'
        if name == "allowed_roles":
            return '["admin"]'
        return "[0.5]"
    named = {
        "log_level": "debug",
        "log_format": "json",
        "http_host": "0.0.0.0",
        "service_manager": "none",
        "control_user": "x-ctl",
        "backend": "nftables",
        "ctl_account": "x-ctl",
        "ctl_systemctl": "/bin/systemctl",
        "ctl_supervisorctl": "/usr/local/bin/supervisorctl",
    }
    return named.get(name, "x-1")


@pytest.mark.parametrize(("readme", "settings_class"), TARGETS, ids=[p.parent.name for p, _ in TARGETS])
def test_every_documented_variable_is_read(
    readme: Path, settings_class: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting each documented variable to a new value changes the loaded settings."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    baseline = settings_class().model_dump()
    for variable, _, meaning in config_docs.settings_rows(settings_class, prefix):
        assert meaning, f"{variable} has no description"
        path = variable.removeprefix(prefix).lower().split("__")
        current = baseline
        for part in path:
            current = current[part]
        new = different(current, path[-1])
        if path == ["env"]:
            monkeypatch.setenv(f"{prefix}ENVS", '{"dev": "amqp://u:p@h/d", "x-1": "amqp://u:p@h/x"}')
        with monkeypatch.context() as m:
            m.setenv(variable, new)
            loaded = settings_class().model_dump()
        value = loaded
        for part in path:
            value = value[part]
        assert value != current, f"{variable}={new} did not change the setting"
