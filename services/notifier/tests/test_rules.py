"""Routing rules: the file's validation and its errors, matching, ordering, grouping, and
``conveyor notify test``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from conveyor.contracts import Envelope
from conveyor.contracts.examples import EXAMPLES
from conveyor_notifier.model import EventFacts, Severity, facts_of
from conveyor_notifier.rules import (
    AppriseReceiverConfig,
    Route,
    RulesConfig,
    RulesError,
    group_key,
    load_rules,
    route,
)

EXAMPLE_FILE = Path(__file__).parents[1] / "rules.example.yaml"
CONVEYOR = str(Path(sys.executable).parent / "conveyor")
RECEIVERS = """
receivers:
  log: {kind: log}
  mail: {kind: email, to: [oncall@example.com]}
  chat: {kind: apprise, urls: ["json://hooks.example.com/conveyor"]}
  pager: {kind: apprise, urls_env: PAGER_URLS}
default_receiver: log
"""


def event(
    message_type: str,
    *,
    env: str = "prod",
    correlation_id: UUID | None = None,
    labels: dict[str, str] | None = None,
    **payload: Any,
) -> EventFacts:
    """The facts of the catalogue's example of ``message_type``, with ``payload`` changed."""
    example = EXAMPLES[message_type].model_copy(update=payload)
    envelope = Envelope.wrap(example, env=env, source="test", correlation_id=correlation_id)
    node = getattr(example, "node", None)
    return facts_of(envelope, {node: labels} if node and labels else None)


def rules_file(tmp_path: Path, rules: str, receivers: str = RECEIVERS) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(receivers + rules)
    return path


def config(tmp_path: Path, rules: str) -> RulesConfig:
    return load_rules(rules_file(tmp_path, rules))


def problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    return str(caught.value)


def rule_names(routes: list[Route]) -> list[str | None]:
    return [r.rule for r in routes]


# --- the example file and routing ---------------------------------------------------------------


def test_the_example_file_is_valid_and_pages_on_a_prod_failure() -> None:
    example = load_rules(EXAMPLE_FILE)
    routes = route(example, event("deployment.failed"))
    assert rule_names(routes) == ["prod-failures", "prod-activity"]
    assert routes[0].receivers == ("pager", "oncall-mail")
    assert (routes[0].escalate_after_s, routes[0].escalate_to) == (600, ("pager",))
    assert example.fallback_receiver == "oncall-mail"
    web_node = event("changeset.failed", node="prod-web-1", labels={"role": "web", "tier": "front"})
    assert rule_names(route(example, web_node)) == ["prod-failures", "prod-web-nodes"]
    assert rule_names(route(example, event("drift.detected", env="qa"))) == ["pre-prod-warnings"]
    assert rule_names(route(example, event("node.heartbeat", env="dev"))) == ["everything-else"]


def test_the_first_matching_rule_wins_unless_it_continues(tmp_path: Path) -> None:
    rules = config(
        tmp_path,
        """
rules:
  - {name: all-prod, match: {env: prod}, receivers: [chat], continue: true}
  - {name: not-this, match: {env: qa}, receivers: [pager]}
  - {name: failures, match: {type: "*.failed"}, receivers: [mail, pager], continue: true}
  - {name: deployments, match: {type: "deployment.*"}, receivers: [mail]}
  - {name: never, match: {}, receivers: [pager]}
""",
    )
    routes = route(rules, event("deployment.failed"))
    assert rule_names(routes) == ["all-prod", "failures", "deployments"]
    # receivers are not merged across routes: the caller sends once per receiver
    assert [r.receivers for r in routes] == [("chat",), ("mail", "pager"), ("mail",)]
    assert rule_names(route(rules, event("changeset.created"))) == ["all-prod", "never"]
    assert rule_names(route(rules, event("changeset.created", env="qa"))) == ["not-this"]


def test_an_event_no_rule_matches_goes_to_the_default_receiver(tmp_path: Path) -> None:
    rules = config(tmp_path, "rules:\n  - {name: qa, match: {env: qa}, receivers: [chat]}\n")
    assert route(rules, event("deployment.failed")) == [
        Route(
            rule=None,
            receivers=("log",),
            group_by=("correlation_id",),
            group_wait_s=10,
            group_interval_s=60,
            escalate_after_s=None,
            escalate_to=(),
        )
    ]
    assert route(config(tmp_path, "rules: []\n"), event("node.heartbeat"))[0].receivers == ("log",)


@pytest.mark.parametrize(
    ("match", "facts", "matches"),
    [
        ("{type: [deployment.failed, changeset.failed]}", event("changeset.failed"), True),
        ("{type: 'deployment.*'}", event("deployment.node.failed"), True),
        ("{type: 'deployment.*'}", event("changeset.failed"), False),
        ("{type: 'Deployment.*'}", event("deployment.failed"), False),  # case-sensitive
        ("{env: [qa, prod]}", event("deployment.failed"), True),
        ("{env: 'q*'}", event("deployment.failed", env="qa"), True),
        ("{env: prod}", event("deployment.failed", env="dev"), False),
        ("{package: ['web*']}", event("deployment.failed", package="web-admin"), True),
        ("{package: ['web*']}", event("deployment.failed", package="api"), False),
        ("{package: ['*']}", event("node.host_key_changed"), False),  # no package: no match
        ("{node: ['prod-web-*']}", event("changeset.failed", node="prod-web-3"), True),
        ("{node: ['prod-web-*']}", event("changeset.failed", node="prod-db-1"), False),
        ("{}", event("message.dead_lettered", env="dev"), True),
    ],
)
def test_globs(tmp_path: Path, match: str, facts: EventFacts, matches: bool) -> None:
    rules = config(tmp_path, f"rules:\n  - {{name: r, match: {match}, receivers: [chat]}}\n")
    assert (rule_names(route(rules, facts)) == ["r"]) is matches


def test_labels_must_all_match(tmp_path: Path) -> None:
    rules = config(
        tmp_path, "rules:\n  - {name: web, match: {labels: {role: web, tier: front}}, receivers: [chat]}\n"
    )

    def routed(labels: dict[str, str] | None, **payload: Any) -> bool:
        return rule_names(route(rules, event("changeset.failed", labels=labels, **payload))) == ["web"]

    assert routed({"role": "web", "tier": "front", "zone": "a"})
    assert not routed({"role": "web"})
    assert not routed({"role": "web", "tier": "back"})
    assert not routed(None)  # a node without labels (not in the inventory)
    facts = event("deployment.failed")  # about no node at all
    assert rule_names(route(rules, facts)) == [None]


def test_severity_list_and_min_severity(tmp_path: Path) -> None:
    rules = config(
        tmp_path,
        """
rules:
  - {name: critical-only, match: {severity: critical}, receivers: [pager]}
  - {name: warnings, match: {severity: [warning]}, receivers: [mail]}
  - {name: at-least-info, match: {min_severity: info}, receivers: [chat]}
""",
    )
    assert event("deployment.failed").severity is Severity.CRITICAL
    assert rule_names(route(rules, event("deployment.failed"))) == ["critical-only"]
    assert rule_names(route(rules, event("changeset.failed"))) == ["warnings"]
    assert rule_names(route(rules, event("deployment.succeeded"))) == ["at-least-info"]
    at_least_warning = config(
        tmp_path, "rules:\n  - {name: w, match: {min_severity: warning}, receivers: [mail]}\n"
    )
    assert rule_names(route(at_least_warning, event("firewall.disabled", env="prod"))) == ["w"]  # critical
    assert rule_names(route(at_least_warning, event("drift.detected"))) == ["w"]  # warning
    assert rule_names(route(at_least_warning, event("deployment.started"))) == [None]  # info


# --- grouping -------------------------------------------------------------------------------------


def test_one_deployments_node_events_share_one_group_key(tmp_path: Path) -> None:
    rules = config(
        tmp_path, "rules:\n  - {name: nodes, match: {type: 'deployment.node.*'}, receivers: [chat]}\n"
    )
    deployment = uuid4()
    keys = set()
    for number in range(20):
        kind = "deployment.node.failed" if number % 4 == 0 else "deployment.node.succeeded"
        facts = event(kind, correlation_id=deployment, node=f"prod-web-{number}")
        keys |= {group_key(r, facts) for r in route(rules, facts)}
    assert keys == {f"nodes:{deployment}"}
    other = event("deployment.node.failed", correlation_id=uuid4())
    assert group_key(route(rules, other)[0], other) != f"nodes:{deployment}"


def test_different_rules_never_share_a_group_key(tmp_path: Path) -> None:
    rules = config(
        tmp_path,
        """
rules:
  - {name: a, match: {}, receivers: [chat], continue: true}
  - {name: default, match: {}, receivers: [mail], continue: true, group_by: [env, labels.role]}
  - {name: none, match: {}, receivers: [mail], group_by: []}
""",
    )
    facts = event("changeset.failed", labels={"role": "web:db"})
    keys = [group_key(r, facts) for r in route(rules, facts)]
    assert keys == ["a:" + facts.correlation_id, "default:prod:web%3Adb", "none"]
    default_key = group_key(route(config(tmp_path, "rules: []\n"), facts)[0], facts)
    assert default_key not in keys
    assert default_key.endswith(facts.correlation_id)


def test_missing_group_by_facts_count_as_dash(tmp_path: Path) -> None:
    rules = config(
        tmp_path, "rules:\n  - {name: r, match: {}, receivers: [chat], group_by: [package, node, labels.x]}\n"
    )
    facts = event("deployment.failed", package="web")  # no node, so no labels
    assert group_key(route(rules, facts)[0], facts) == "r:web:-:-"


# --- the file's errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            RECEIVERS + "rules:\n  - {name: prod-failures, receivers: [pagr]}\n",
            "rule prod-failures: receivers: no receiver 'pagr'; the receivers are chat, log, mail, pager",
        ),
        (
            RECEIVERS
            + "rules:\n  - {name: esc, receivers: [mail], escalate_after_s: 60, escalate_to: [pagr]}\n",
            "rule esc: escalate_to: no receiver 'pagr'",
        ),
        (
            RECEIVERS
            + "rules:\n  - {name: prod-failures, match: {severity: [critcal]}, receivers: [mail]}\n",
            "rule prod-failures: match.severity: "
            "Input should be 'info', 'warning' or 'critical' (got 'critcal')",
        ),
        (
            RECEIVERS + "rules:\n  - {name: p, match: {min_severity: high}, receivers: [mail]}\n",
            "rule p: match.min_severity: Input should be 'info', 'warning' or 'critical' (got 'high')",
        ),
        (
            RECEIVERS + "rules:\n  - {name: twice, receivers: [mail]}\n  - {name: twice, receivers: [log]}\n",
            "rule twice: name: also the name of rule #1; rule names must be unique",
        ),
        (
            RECEIVERS + "rules:\n  - {name: esc, receivers: [mail], escalate_after_s: 600}\n",
            "rule esc: escalate_to: required with escalate_after_s",
        ),
        (
            RECEIVERS + "rules:\n  - {name: esc, receivers: [mail], escalate_to: [pager]}\n",
            "rule esc: escalate_after_s: required with escalate_to",
        ),
        (
            RECEIVERS + "rules:\n  - {name: typo, receivers: [mail], contine: true}\n",
            "rule typo: contine: not a known option; did you mean continue?",
        ),
        (
            RECEIVERS + "rules:\n  - {name: typo, match: {pakage: web}, receivers: [mail]}\n",
            "rule typo: match.pakage: not a known option; did you mean package?",
        ),
        (
            RECEIVERS + "rules:\n  - {name: g, receivers: [mail], group_by: [deployment]}\n",
            "rule g: group_by: 'deployment' is not a fact",
        ),
        (
            RECEIVERS
            + "rules:\n  - {name: both, match: {severity: critical, min_severity: info}, receivers: [log]}\n",
            "rule both: match.min_severity: give severity or min_severity, not both",
        ),
        (
            RECEIVERS + "rules:\n  - {receivers: [log]}\n",
            "rule #1: name: Field required",
        ),
        (
            RECEIVERS.replace("urls_env: PAGER_URLS", 'urls_env: PAGER_URLS, urls: ["json://x/y"]'),
            "receivers.pager: urls_env: give urls or urls_env, not both",
        ),
        (
            RECEIVERS.replace("urls_env: PAGER_URLS", "retries: 2"),
            "receivers.pager: urls: required (or urls_env",
        ),
        (
            RECEIVERS.replace("[oncall@example.com]", "[oncall.example.com]"),
            "receivers.mail: to: 'oncall.example.com' is not an email address",
        ),
        (
            RECEIVERS.replace("[oncall@example.com]", "['on call@example.com']"),
            "receivers.mail: to: 'on call@example.com' is not an email address",
        ),
        (
            RECEIVERS.replace("[oncall@example.com]", "[]"),
            "receivers.mail: to: an empty list; give at least one item",
        ),
        (
            RECEIVERS.replace("{kind: log}", "{kind: log, retriez: 2}"),
            "receivers.log: retriez: not a known option; did you mean retries?",
        ),
        (
            RECEIVERS.replace("{kind: log}", "{kind: log, retries: 11}"),
            "receivers.log: retries: Input should be less than or equal to 10",
        ),
        (
            RECEIVERS.replace("{kind: log}", "{kind: sms}"),
            "receivers.log: kind: expected email, apprise or log (got 'sms')",
        ),
        (
            RECEIVERS.replace("default_receiver: log", "default_receiver: logs"),
            "default_receiver: no receiver 'logs'",
        ),
        (
            RECEIVERS + "fallback_receiver: oncall\n",
            "fallback_receiver: no receiver 'oncall'",
        ),
        (
            RECEIVERS + "rule: []\n",
            "rule: not a known option; did you mean rules?",
        ),
    ],
)
def test_errors_name_the_rule_or_receiver_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    message = problems(tmp_path, text)
    assert f"{tmp_path / 'rules.yaml'}: {expected}" in message.splitlines()[0]


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    text = RECEIVERS + "rules:\n  - {name: a, receivers: [x]}\n  - {name: b, receivers: [mail, y]}\n"
    lines = problems(tmp_path, text).splitlines()
    assert [line.split(": ")[1:3] for line in lines] == [["rule a", "receivers"], ["rule b", "receivers"]]


def test_apprise_urls_are_not_echoed_in_errors(tmp_path: Path) -> None:
    text = RECEIVERS.replace("json://hooks.example.com/conveyor", "slack:/T0/B0/s3cret-token")
    message = problems(tmp_path, text)
    assert "receivers.chat: urls: expected an Apprise URL" in message
    assert "s3cret" not in message


def test_bad_yaml_names_its_line(tmp_path: Path) -> None:
    message = problems(
        tmp_path, "receivers:\n  log: {kind: log}\ndefault_receiver: log\nrules: [\n  {name: x\n"
    )
    assert message.startswith(f"{tmp_path / 'rules.yaml'}: line 6, column 1: not valid YAML: ")


def test_a_key_given_twice_is_an_error_not_a_silent_overwrite(tmp_path: Path) -> None:
    twice = RECEIVERS.replace(
        "  log: {kind: log}\n", "  log: {kind: log}\n  log: {kind: email, to: [a@b.c]}\n"
    )
    message = problems(tmp_path, twice)
    assert message.endswith(
        "rules.yaml: line 4, column 3: not valid YAML: 'log' is given twice in this mapping"
    )


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"no-such\.yaml: no such rules file"):
        load_rules(tmp_path / "no-such.yaml")
    assert "the file is empty; expected a mapping" in problems(tmp_path, "")


def test_apprise_urls_come_from_the_environment_when_urls_env_is_given(tmp_path: Path) -> None:
    pager = config(tmp_path, "").receivers["pager"]
    assert isinstance(pager, AppriseReceiverConfig)
    urls = "pagerduty://KEY@ROUTING, json://hooks.example.com/x\n"
    assert pager.resolve_urls({"PAGER_URLS": urls}) == (
        "pagerduty://KEY@ROUTING",
        "json://hooks.example.com/x",
    )
    with pytest.raises(ValueError, match=r"\$PAGER_URLS is unset or empty"):
        pager.resolve_urls({})
    with pytest.raises(ValueError, match=r"\$PAGER_URLS, URL #2: expected an Apprise URL"):
        pager.resolve_urls({"PAGER_URLS": "json://a/b not-a-url"})


# --- conveyor notify test ---------------------------------------------------------------------------


def notify_test(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "COLUMNS": "80"}
    return subprocess.run(
        [CONVEYOR, "notify", "test", *args],
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def event_file(tmp_path: Path, message_type: str, env: str = "prod") -> Path:
    path = tmp_path / f"{message_type}.json"
    path.write_bytes(Envelope.wrap(EXAMPLES[message_type], env=env, source="test").to_json())
    return path


def test_cli_prints_the_routes_of_a_catalogue_event(tmp_path: Path) -> None:
    path = event_file(tmp_path, "deployment.failed")
    correlation = json.loads(path.read_text())["correlation_id"]
    result = notify_test("--rules", str(EXAMPLE_FILE), "--event", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "event        deployment.failed in prod, severity critical" in out
    assert "package      web v42" in out
    assert "route 1      rule prod-failures → pager, oncall-mail" in out
    assert f"  group key  prod-failures:{correlation}" in out
    assert "  grouping   by correlation_id: first after 10s, then at most every 60s" in out
    assert "  escalates  after 600s unacknowledged, to pager" in out
    assert "route 2      rule prod-activity → platform-chat" in out
    assert "nothing was sent" in out


def test_cli_json_with_node_labels_from_stdin(tmp_path: Path) -> None:
    envelope = Envelope.wrap(
        EXAMPLES["changeset.failed"].model_copy(update={"node": "prod-web-1"}), env="prod", source="test"
    )
    result = notify_test(
        "--rules",
        str(EXAMPLE_FILE),
        "--event",
        "-",
        "--labels",
        "prod-web-1=role=web,tier=front",
        "--labels",
        "prod-db-1=role=db",
        "--json",
        stdin=envelope.to_json().decode(),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["facts"]["labels"] == {"role": "web", "tier": "front"}
    assert report["facts"]["severity"] == "warning"
    assert [r["rule"] for r in report["routes"]] == ["prod-failures", "prod-web-nodes"]
    assert report["routes"][1] == {
        "rule": "prod-web-nodes",
        "receivers": ["web-team"],
        "group_key": f"prod-web-nodes:{envelope.correlation_id}:web",
        "group_by": ["correlation_id", "package"],
        "group_wait_s": 10.0,
        "group_interval_s": 60.0,
        "escalate_after_s": None,
        "escalate_to": [],
    }


def test_cli_exits_2_on_a_bad_rules_file(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "rules:\n  - {name: prod-failures, receivers: [pagr]}\n")
    result = notify_test("--rules", str(path), "--event", str(event_file(tmp_path, "deployment.failed")))
    assert result.returncode == 2
    assert f"error: {path}: rule prod-failures: receivers: no receiver 'pagr'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_exits_2_on_an_event_it_cannot_decode(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "deployment.failed"')
    result = notify_test("--rules", str(EXAMPLE_FILE), "--event", str(broken))
    assert result.returncode == 2
    assert f"error: {broken}: not a Conveyor event: body is not JSON" in result.stderr
    unknown = json.loads(event_file(tmp_path, "deployment.failed").read_text()) | {
        "type": "deployment.exploded"
    }
    broken.write_text(json.dumps(unknown))
    result = notify_test("--rules", str(EXAMPLE_FILE), "--event", str(broken))
    assert result.returncode == 2
    assert "unknown message type 'deployment.exploded'" in result.stderr
    result = notify_test("--rules", str(EXAMPLE_FILE), "--event", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "nope.json: cannot read the event: No such file or directory" in result.stderr


def test_cli_says_when_the_notifier_package_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conveyor.cli import notify

    for module in [m for m in sys.modules if m.partition(".")[0] == "conveyor_notifier"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "conveyor_notifier", None)  # as if not installed
    code = notify.run_test(
        str(EXAMPLE_FILE), str(event_file(tmp_path, "deployment.failed")), labels=[], as_json=False
    )
    assert code == 2
    assert "conveyor notify test needs the conveyor-notifier package installed" in capsys.readouterr().err
