"""Routing rules: which receivers hear about an event, grouped how, escalated when.

The rules file (YAML; ``rules.example.yaml`` shows every option) names the receivers and lists the
rules in order. :func:`route` walks them: the first rule whose ``match`` fits the event's facts wins,
unless it says ``continue: true``, in which case the next matching rules add their routes too; an
event no rule matches goes to ``default_receiver``. :func:`group_key` says which messages of a route
are one notification (by default: one deployment, one message).

Validated when the notifier starts; every error names the rule or receiver and the field, e.g.
``rules.yaml: rule prod-failures: match.severity: Input should be 'info', 'warning' or 'critical'
(got 'critcal')``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from conveyor_notifier.model import EventFacts, Severity

__all__ = [
    "DEFAULT_GROUP_BY",
    "AppriseReceiverConfig",
    "EmailReceiverConfig",
    "LogReceiverConfig",
    "Match",
    "ReceiverConfig",
    "Route",
    "Rule",
    "RulesConfig",
    "RulesError",
    "fact_name",
    "group_key",
    "load_rules",
    "route",
]

DEFAULT_GROUP_BY = ("correlation_id",)
_DEFAULT_RULE_KEY = "(default)"  # not a valid rule name, so the default route never shares a rule's keys
_FACTS = ("type", "env", "package", "version", "node", "actor", "source", "severity", "correlation_id")
_SECRET_FIELDS = frozenset({"urls"})  # never echoed in an error: apprise URLs carry tokens


class RulesError(ValueError):
    """The rules file is missing, not YAML, or does not follow the schema; one line per problem."""


def _one_or_many(value: Any) -> Any:
    """``env: prod`` means ``env: [prod]``."""
    return [value] if isinstance(value, str) else value


def _email(address: str) -> str:
    local, at, domain = address.partition("@")
    if not at or not local or not domain or "@" in domain or re.search(r"\s", address):
        raise ValueError(f"{address!r} is not an email address (expected one like oncall@example.com)")
    return address


def _apprise_url(url: str) -> str:
    # the URL is not echoed: apprise URLs carry tokens
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", url):
        raise ValueError(
            "expected an Apprise URL like slack://TOKEN_A/TOKEN_B or mailto://host/, without spaces"
        )
    return url


def fact_name(name: str) -> str:
    """``name`` if it names a fact (``type``, ``env``... or ``labels.<key>``), else ``ValueError``."""
    if name in _FACTS or (name.startswith("labels.") and len(name) > len("labels.")):
        return name
    raise ValueError(f"{name!r} is not a fact; expected one of {', '.join(_FACTS)}, or labels.<key>")


_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=_NAME_PATTERN)]
EnvVar = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Email = Annotated[str, AfterValidator(_email)]
AppriseUrl = Annotated[str, AfterValidator(_apprise_url)]
Globs = Annotated[tuple[Annotated[str, StringConstraints(min_length=1)], ...], Field(min_length=1)]
GroupField = Annotated[str, AfterValidator(fact_name)]
Seconds = Annotated[float, Field(ge=0, le=86_400)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Receiver(_Strict):
    retries: int = Field(default=3, ge=0, le=10, description="attempts after the first before fallback")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="per attempt")


class EmailReceiverConfig(_Receiver):
    kind: Literal["email"]
    to: tuple[Email, ...] = Field(min_length=1)
    cc: tuple[Email, ...] = ()
    subject_prefix: str = "[conveyor]"


class AppriseReceiverConfig(_Receiver):
    """Chat, webhooks, paging: any Apprise URL. ``urls_env`` names an environment variable holding
    the URLs (separated by spaces or commas) so their tokens stay out of the rules file."""

    kind: Literal["apprise"]
    urls: tuple[AppriseUrl, ...] | None = Field(default=None, min_length=1)
    urls_env: EnvVar | None = None

    @model_validator(mode="after")
    def _urls_or_urls_env(self) -> AppriseReceiverConfig:
        if self.urls is not None and self.urls_env is not None:
            raise ValueError("urls_env: give urls or urls_env, not both")
        if self.urls is None and self.urls_env is None:
            raise ValueError("urls: required (or urls_env: the environment variable that holds them)")
        return self

    def resolve_urls(self, environ: Mapping[str, str]) -> tuple[str, ...]:
        """The URLs, from the file or from ``environ[urls_env]``; ``ValueError`` if that is unset,
        empty, or holds something that is not an Apprise URL."""
        if self.urls is not None:
            return self.urls
        assert self.urls_env is not None  # the validator guarantees one of them
        urls = tuple(u for u in re.split(r"[\s,]+", environ.get(self.urls_env, "")) if u)
        if not urls:
            raise ValueError(f"urls_env: ${self.urls_env} is unset or empty; set it to the Apprise URLs")
        for number, url in enumerate(urls, start=1):
            try:
                _apprise_url(url)
            except ValueError as exc:
                raise ValueError(f"urls_env: ${self.urls_env}, URL #{number}: {exc}") from None
        return urls


class LogReceiverConfig(_Receiver):
    """Writes the message to the notifier's log: for development, and as a last resort."""

    kind: Literal["log"]


ReceiverConfig = Annotated[
    EmailReceiverConfig | AppriseReceiverConfig | LogReceiverConfig,
    Discriminator("kind"),
]


class Match(_Strict):
    """What a rule matches; every field given must match, an empty ``match`` matches everything.
    Globs are ``fnmatch`` patterns, case-sensitive; a list matches if any item does."""

    type: Annotated[Globs | None, BeforeValidator(_one_or_many)] = None
    env: Annotated[Globs | None, BeforeValidator(_one_or_many)] = None
    package: Annotated[Globs | None, BeforeValidator(_one_or_many)] = None
    node: Annotated[Globs | None, BeforeValidator(_one_or_many)] = None
    labels: dict[str, str] = Field(default_factory=dict, description="node labels; all must match")
    severity: Annotated[
        Annotated[tuple[Severity, ...], Field(min_length=1)] | None, BeforeValidator(_one_or_many)
    ] = None
    min_severity: Severity | None = None

    @model_validator(mode="after")
    def _one_severity_test(self) -> Match:
        if self.severity is not None and self.min_severity is not None:
            raise ValueError("min_severity: give severity or min_severity, not both")
        return self

    def matches(self, facts: EventFacts) -> bool:
        return (
            _any_glob(self.type, facts.type)
            and _any_glob(self.env, facts.env)
            and _any_glob(self.package, facts.package)
            and _any_glob(self.node, facts.node)
            and all(facts.labels.get(key) == value for key, value in self.labels.items())
            and (self.severity is None or facts.severity in self.severity)
            and (self.min_severity is None or facts.severity.rank >= self.min_severity.rank)
        )


def _any_glob(globs: tuple[str, ...] | None, value: str | None) -> bool:
    if globs is None:
        return True
    return value is not None and any(fnmatchcase(value, glob) for glob in globs)


@dataclass(frozen=True)
class Route:
    """Where one rule sends an event; ``rule`` is None for the default receiver."""

    rule: str | None
    receivers: tuple[str, ...]
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    group_wait_s: float = 10.0
    group_interval_s: float = 60.0
    escalate_after_s: float | None = None
    escalate_to: tuple[str, ...] = ()


class Rule(_Strict):
    name: Name
    match: Match = Field(default_factory=Match)
    receivers: tuple[Name, ...] = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue", description="also try the rules after it")
    group_by: tuple[GroupField, ...] = Field(
        default=DEFAULT_GROUP_BY, description="facts whose values make one notification"
    )
    group_wait_s: Seconds = Field(default=10.0, description="wait this long for more before the first send")
    group_interval_s: Seconds = Field(
        default=60.0, description="then send what came since at most this often"
    )
    escalate_after_s: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = None
    escalate_to: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _escalation_complete(self) -> Rule:
        if self.escalate_after_s is not None and not self.escalate_to:
            raise ValueError("escalate_to: required with escalate_after_s (the receivers to escalate to)")
        if self.escalate_to and self.escalate_after_s is None:
            raise ValueError("escalate_after_s: required with escalate_to (seconds before escalating)")
        return self

    def route(self) -> Route:
        return Route(
            rule=self.name,
            receivers=self.receivers,
            group_by=self.group_by,
            group_wait_s=self.group_wait_s,
            group_interval_s=self.group_interval_s,
            escalate_after_s=self.escalate_after_s,
            escalate_to=self.escalate_to,
        )


class RulesConfig(_Strict):
    receivers: dict[Name, ReceiverConfig] = Field(min_length=1)
    default_receiver: Name = Field(description="gets every event no rule matches")
    fallback_receiver: Name | None = Field(
        default=None, description="gets a message whose delivery failed after its retries"
    )
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _names_resolve(self) -> RulesConfig:
        problems: list[str] = []
        first: dict[str, int] = {}
        for number, rule in enumerate(self.rules, start=1):
            if rule.name in first:
                problems.append(
                    f"rule {rule.name}: name: also the name of rule #{first[rule.name]}; "
                    "rule names must be unique"
                )
            first.setdefault(rule.name, number)
            problems += [
                f"rule {rule.name}: {field}: {self._unknown(name)}"
                for field, names in (("receivers", rule.receivers), ("escalate_to", rule.escalate_to))
                for name in names
                if name not in self.receivers
            ]
        for field, name in (
            ("default_receiver", self.default_receiver),
            ("fallback_receiver", self.fallback_receiver),
        ):
            if name is not None and name not in self.receivers:
                problems.append(f"{field}: {self._unknown(name)}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _unknown(self, name: str) -> str:
        return f"no receiver {name!r}; the receivers are {', '.join(sorted(self.receivers))}"

    def default_route(self) -> Route:
        return Route(rule=None, receivers=(self.default_receiver,))


def route(config: RulesConfig, facts: EventFacts) -> list[Route]:
    """The routes of an event, in rule order: each matching rule's, up to the first matching one
    without ``continue``; the default receiver's if no rule matches. Receivers are not merged across
    routes (each route groups and escalates on its own terms)."""
    routes: list[Route] = []
    for rule in config.rules:
        if rule.match.matches(facts):
            routes.append(rule.route())
            if not rule.continue_:
                break
    return routes or [config.default_route()]


def group_key(route: Route, facts: EventFacts) -> str:
    """``<rule>:<value>:…``, the values of the route's ``group_by`` facts ("-" if missing), so
    two events with the same key are one notification. Values are %-escaped: distinct values never
    collide, and the rule name comes first so different rules never share a key."""
    values = (facts.field(name) for name in route.group_by)
    return ":".join(
        [route.rule or _DEFAULT_RULE_KEY, *("-" if v is None else quote(v, safe="") for v in values)]
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader refusing a key given twice in one mapping (YAML keeps the last one silently,
    which would quietly drop a receiver or a rule's option)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in this mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _where(data: Any, loc: tuple[int | str, ...]) -> tuple[str, str]:
    """``('rules', 0, 'match', 'severity', 1)`` → ``("rule prod-failures", "match.severity")``, naming
    rules by their names where the file gives them; ``('receivers', 'pager', 'apprise', 'urls', 0)``
    → ``("receivers.pager", "urls")``. List positions are left out: the message shows the bad value."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules") if isinstance(data, dict) else None
        item = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        name = item.get("name") if isinstance(item, dict) else None
        place, rest = f"rule {name if isinstance(name, str) and name else f'#{loc[1] + 1}'}", loc[2:]
    elif len(loc) >= 2 and loc[0] == "receivers":
        place, rest = f"receivers.{loc[1]}", loc[2:]
        if rest and rest[0] in ("email", "apprise", "log"):  # the union's tag, not a field
            rest = rest[1:]
        if rest == ("[key]",):
            rest = ("name",)
    else:
        place, rest = "", loc
    return place, ".".join(str(part) for part in rest if not isinstance(part, int))


def _line(path: Path, place: str, field: str, message: str) -> str:
    """``<path>: <place>: <field>: <message>``; a model's own check says which of its fields it
    means (``min_severity: give severity or …``), which joins the field path."""
    option, _, rest = message.partition(": ")
    if field and option in _OPTIONS and rest:
        field, message = f"{field}.{option}", rest
    return ": ".join(part for part in (str(path), place, field, message) if part)


def _message(error: Mapping[str, Any]) -> str:
    """Pydantic's message, made to say what was given and what would do, except for secrets."""
    kind, value, message = error["type"], error.get("input"), str(error["msg"]).removeprefix("Value error, ")
    fields = [part for part in error["loc"] if isinstance(part, str)]
    shown = f" (got {value!r})" if _showable(value) and not _SECRET_FIELDS & set(fields) else ""
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(fields[-1], _OPTIONS, n=1, cutoff=0.75)
        return "not a known option" + (f"; did you mean {close[0]}?" if close else "")
    if kind == "union_tag_not_found":
        return "kind: required: email, apprise or log"
    if kind == "union_tag_invalid":
        return f"kind: expected email, apprise or log (got {error.get('ctx', {}).get('tag')!r})"
    if kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "an empty list; give at least one item"
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == _NAME_PATTERN:
        return f"names are lowercase letters, digits, '-' and '_', starting with a letter or digit{shown}"
    if kind == "string_type" and isinstance(value, int | float):
        return f"{message}{shown}; quote it in YAML"
    if kind in {"enum", "literal_error", "string_pattern_mismatch"}:
        return message + shown
    return message


def _showable(value: Any) -> bool:
    return isinstance(value, str | int | float) and len(str(value)) <= 80


def _problems(path: Path, data: Any, exc: ValidationError) -> list[str]:
    errors = exc.errors(include_url=False)
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "too_short" and any(
            e is not error and e["loc"][: len(loc)] == loc for e in errors
        ):
            continue  # "at least 1 item after validation": its items' own errors say more
        place, field = _where(data, loc)
        for line in _message(error).splitlines():  # the cross-checks give one line per problem
            problems.append(_line(path, place, field, line))
    return problems


_OPTIONS = sorted(
    {
        field.alias or name
        for model in (RulesConfig, Rule, Match, EmailReceiverConfig, AppriseReceiverConfig, LogReceiverConfig)
        for name, field in model.model_fields.items()
    }
)


def load_rules(path: Path) -> RulesConfig:
    """Read and validate the rules file; ``RulesError`` with one line per problem."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file (start from rules.example.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(
            f"{path}: cannot read the rules file: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RulesError(f"{path}: {at}not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise RulesError(
            f"{path}: the file is {what}; expected a mapping with receivers, default_receiver, rules"
        )
    try:
        return RulesConfig.model_validate(data)
    except ValidationError as exc:
        raise RulesError("\n".join(_problems(path, data, exc))) from None
