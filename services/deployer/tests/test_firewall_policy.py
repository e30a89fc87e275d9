"""The deployer's firewall policy and targeting, on a real inventory: who may open which environment's
firewalls for how long, and which servers a request reaches."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_deployer.config import FirewallPolicy, Role, Settings
from conveyor_deployer.firewall import FirewallControl, FirewallRefused
from conveyor_deployer.inventory import Inventory
from conveyor_deployer.nodes import NodeAccess


def control(tmp_path: Path) -> FirewallControl:
    def node(name: str, role: str) -> dict[str, object]:
        return {"name": name, "address": "127.0.0.1", "labels": {"role": role}}

    inventory = Inventory.model_validate(
        {
            "environments": [
                {"name": "dev", "clusters": [{"name": "a", "nodes": [node("dev-web-1", "web")]}]},
                {
                    "name": "qa",
                    "clusters": [
                        {
                            "name": "a",
                            "nodes": [
                                node("qa-web-1", "web"),
                                node("qa-web-2", "web"),
                                node("qa-db-1", "db"),
                            ],
                        }
                    ],
                },
                {"name": "prod", "clusters": [{"name": "a", "nodes": [node("prod-web-1", "web")]}]},
                {"name": "lab", "clusters": [{"name": "a", "nodes": [node("lab-1", "web")]}]},
            ]
        }
    )
    settings = Settings(
        state_dir=tmp_path, envs={e: f"amqp://u:p@h/{e}" for e in ("dev", "qa", "prod", "lab")}
    )
    access = NodeAccess(settings, inventory, lambda env, payload, actor=None: None)
    return FirewallControl(
        settings,
        inventory,
        {},
        {},
        key=lambda: None,
        nodes=access,
        announce=lambda env, payload, actor=None: None,
    )


def test_the_default_policy(tmp_path: Path) -> None:
    fw = control(tmp_path)
    assert fw.decide("deployer", "disable", {"qa"}, 3600) == (True, "allowed by the policy", 0)
    allowed, why, _ = fw.decide("reader", "disable", {"qa"}, 60)
    assert not allowed
    assert why == "policy: role reader may not change firewalls in qa (allowed: deployer, admin)"
    allowed, why, _ = fw.decide("deployer", "disable", {"qa"}, 3 * 3600)
    assert not allowed
    assert why == "policy: a lease of 10800s is longer than qa allows (7200s)"
    assert not fw.decide("deployer", "disable", {"prod"}, 60)[0]  # prod: admins only
    assert fw.decide("admin", "disable", {"prod"}, 1800) == (
        True,
        "allowed by the policy",
        1,
    )  # and a second person
    assert not fw.decide("admin", "disable", {"prod"}, 1801)[0]
    assert fw.decide("admin", "enable", {"prod"}, None) == (
        True,
        "allowed by the policy",
        0,
    )  # restoring: no wait
    allowed, why, _ = fw.decide("admin", "disable", {"lab"}, 60)
    assert not allowed
    assert "no firewall policy for env lab" in why
    # a request spanning environments must pass every one of them
    assert not fw.decide("deployer", "disable", {"dev", "prod"}, 60)[0]
    assert fw.decide("admin", "disable", {"dev", "prod"}, 60)[2] == 1


def test_a_policy_from_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CONVEYOR_DEPLOYER_FIREWALL_POLICY",
        '{"qa": {"roles": ["admin"], "max_lease_s": 600, "approvals": 1}}',
    )
    settings = Settings(state_dir=tmp_path)
    assert settings.firewall_policy == {
        "qa": FirewallPolicy(roles=[Role.ADMIN], max_lease_s=600, approvals=1)
    }
    monkeypatch.setenv("CONVEYOR_DEPLOYER_FIREWALL_POLICY", '{"qa": {"roles": ["root"], "max_lease_s": 600}}')
    with pytest.raises(ValueError, match="roles"):
        Settings(state_dir=tmp_path)


def test_targets_unknown_names_reported_duplicates_and_blanks_dropped(tmp_path: Path) -> None:
    fw = control(tmp_path)
    targets, unknown = fw.resolve(
        ["qa-web-1", "", "nope", "qa-web-2", "qa-web-1", " qa-web-2 ", "nope", "prod-web-1"], None, {}
    )
    assert [(e, n.name) for e, n in targets] == [
        ("qa", "qa-web-1"),
        ("qa", "qa-web-2"),
        ("prod", "prod-web-1"),
    ]
    assert unknown == ["nope"]
    # with --env, names of other environments are not taken
    targets, unknown = fw.resolve(["qa-web-1", "prod-web-1"], "qa", {})
    assert [n.name for _, n in targets] == ["qa-web-1"]
    assert unknown == ["prod-web-1"]
    # an environment and labels
    targets, _ = fw.resolve(None, "qa", {"role": "web"})
    assert [n.name for _, n in targets] == ["qa-web-1", "qa-web-2"]
    with pytest.raises(FirewallRefused, match="no environment 'nowhere'"):
        fw.resolve(None, "nowhere", {})
