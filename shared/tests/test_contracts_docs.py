"""The generated message docs: committed and fresh, complete, deterministic, and valid AsyncAPI 3."""

import copy
import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import BaseModel, ConfigDict
from referencing import Registry as SchemaRegistry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT7, DRAFT202012

from conveyor.contracts import CATALOGUE, Envelope, Payload, Registry
from conveyor.contracts.docs import (
    ASYNCAPI_FILE,
    COMMAND,
    MARKDOWN_FILE,
    generate,
    main,
    render_asyncapi,
    render_markdown,
)
from conveyor.contracts.examples import EXAMPLES
from conveyor.settings import DEFAULT_ENVS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# The official AsyncAPI 3.0.0 JSON schema, every document it refers to bundled inside: see data/README.md.
ASYNCAPI_SCHEMA = Path(__file__).resolve().parent / "data" / "asyncapi-3.0.0.schema.json"

# Key patterns and fixed fields from the AsyncAPI 3.0.0 specification.
KEY = re.compile(r"^[\w\d.\-_]+$")
PARAMETER_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
RUNTIME_EXPRESSION = re.compile(r"^\$message\.(header|payload)#(/(([^/~])|(~[01]))*)*$")
FIELDS = {
    "document": {
        "asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components",
    },
    "info": {
        "title", "version", "description", "termsOfService", "contact", "license", "tags", "externalDocs",
    },
    "server": {
        "host", "protocol", "protocolVersion", "pathname", "description", "title", "summary", "variables",
        "security", "tags", "externalDocs", "bindings",
    },
    "channel": {
        "address", "messages", "title", "summary", "description", "servers", "parameters", "tags",
        "externalDocs", "bindings",
    },
    "parameter": {"enum", "default", "description", "examples", "location"},
    "operation": {
        "action", "channel", "title", "summary", "description", "security", "tags", "externalDocs",
        "bindings", "traits", "messages", "reply",
    },
    "message": {
        "headers", "payload", "correlationId", "contentType", "name", "title", "summary", "description",
        "tags", "externalDocs", "bindings", "examples", "traits",
    },
    "correlationId": {"description", "location"},
    "example": {"headers", "payload", "name", "summary"},
    "components": {
        "schemas", "servers", "channels", "operations", "messages", "securitySchemes", "serverVariables",
        "parameters", "correlationIds", "replies", "replyAddresses", "externalDocs", "tags",
        "operationTraits", "messageTraits", "serverBindings", "channelBindings", "operationBindings",
        "messageBindings",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def markdown() -> str:
    return render_markdown()


@pytest.fixture(scope="module")
def asyncapi_text() -> str:
    return render_asyncapi()


@pytest.fixture(scope="module")
def asyncapi(asyncapi_text: str) -> dict[str, Any]:
    document = yaml.safe_load(asyncapi_text)
    assert isinstance(document, dict)
    return document


def _assert_fields(kind: str, value: Any, where: str) -> None:
    assert isinstance(value, dict), f"{where} is not an object"
    unknown = {key for key in value if key not in FIELDS[kind] and not key.startswith("x-")}
    assert not unknown, f"{where}: fields a {kind} object does not have: {sorted(unknown)}"


def _refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _refs(item, f"{where}/{index}")


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} is not a local reference"
    node: Any = document
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref}: {key} is not inside an object"
        assert key in node, f"{ref} does not resolve ({key} missing)"
        node = node[key]
    return node


def _json_blocks(markdown: str) -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", markdown, flags=re.DOTALL)


def _errors(validator: Draft7Validator | Draft202012Validator, instance: Any) -> list[str]:
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(instance)]


# -- the committed files ----------------------------------------------------------------


@pytest.mark.parametrize("name", [MARKDOWN_FILE, ASYNCAPI_FILE])
def test_committed_docs_are_fresh(name: str) -> None:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing: run `{COMMAND}`"
    fresh = generate()[name]
    on_disk = path.read_text(encoding="utf-8")
    assert on_disk == fresh, f"docs/{name} is stale: run `{COMMAND}` and commit the result"


def test_check_passes_on_the_committed_docs(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    assert main(["--check"]) == 0
    assert capsys.readouterr().err == ""


# -- content ------------------------------------------------------------------------------


def test_every_registered_type_is_in_both_documents(markdown: str, asyncapi: dict[str, Any]) -> None:
    for model in CATALOGUE:
        key = f"{model.message_type}.v{model.schema_version}"
        assert f"\n### `{model.message_type}`\n" in markdown
        assert model.message_type in asyncapi["channels"]
        assert key in asyncapi["channels"][model.message_type]["messages"]
        assert key in asyncapi["components"]["messages"]
        assert f"{model.message_type}.send" in asyncapi["operations"]


def test_markdown_sections_are_sorted_by_type(markdown: str) -> None:
    headings = re.findall(r"^### `([a-z_.]+)`", markdown, flags=re.MULTILINE)
    assert headings == sorted(model.message_type for model in CATALOGUE)


def test_markdown_documents_the_envelope_and_routing(markdown: str) -> None:
    assert COMMAND in markdown.splitlines()[2]
    envelope = markdown.split("## The envelope", 1)[1].split("\n## ", 1)[0]
    for name, field in Envelope.model_fields.items():
        assert field.description, f"Envelope.{name} has no description for the docs"
        meaning = field.description.rstrip(".")
        assert re.search(rf"^\| `{name}` \| .* \| {re.escape(meaning)}(;| \|)", envelope, re.MULTILINE)
    for exchange in ("conveyor.events", "conveyor.commands", "conveyor.retry", "conveyor.dead-letter"):
        assert f"`{exchange}`" in markdown
    assert "`<domain>.<verb>[.<target>]`" in markdown
    for prop in ("message_id", "type", "correlation_id", "content_type", "delivery_mode"):
        assert f"| `{prop}` |" in markdown
    assert "application/json" in markdown


def test_every_message_model_has_a_docstring(markdown: str) -> None:
    for model in CATALOGUE:
        assert model.__doc__, f"{model.__name__} needs a docstring: it is the message's description"
        section = markdown.split(f"\n### `{model.message_type}`\n", 1)[1].split("\n### ", 1)[0]
        assert f"\n\n{inspect.cleandoc(model.__doc__)}\n\n**Payload**\n\n" in section


def test_markdown_message_section(markdown: str) -> None:
    section = markdown.split("### `firewall.disable`\n", 1)[1].split("\n### ", 1)[0]
    assert "- **Kind:** command" in section
    assert "- **Exchange:** `conveyor.commands` (topic)" in section
    assert "`firewall.disable.<node>`" in section
    assert "Disable one node's firewall for a lease" in section
    assert "| `lease_s` | integer | yes | > 0, ≤ 604800 |" in section
    assert "| `authorization` | [CommandAuthorization](#commandauthorization) | yes |" in section
    assert "### CommandAuthorization" in markdown

    section = markdown.split("### `deployment.requested`\n", 1)[1].split("\n### ", 1)[0]
    assert "- **Kind:** event" in section
    assert "- **Routing key:** `deployment.requested`\n" in section
    assert '| `strategy` | string | no | one of `"waves"`, `"all-at-once"`; default `"waves"` |' in section
    assert "| `from_env` | string or null | yes |" in section


def test_markdown_examples_decode_as_their_types(markdown: str) -> None:
    blocks = _json_blocks(markdown)
    decoded = [CATALOGUE.decode(block.encode()) for block in blocks]
    assert [envelope.type for envelope in decoded] == [model.message_type for model in CATALOGUE]
    for envelope in decoded:
        assert envelope.payload == EXAMPLES[envelope.type]
        assert envelope.env == "qa"


def test_rendering_is_deterministic() -> None:
    shuffled = Registry(reversed(list(CATALOGUE)))
    assert render_markdown() == render_markdown(shuffled)
    assert render_asyncapi() == render_asyncapi(shuffled)
    assert generate() == generate()


# -- AsyncAPI structure ----------------------------------------------------------------------


def test_asyncapi_document(asyncapi: dict[str, Any], asyncapi_text: str) -> None:
    _assert_fields("document", asyncapi, "#")
    assert asyncapi["asyncapi"] == "3.0.0"
    _assert_fields("info", asyncapi["info"], "#/info")
    assert asyncapi["info"]["title"] == "Conveyor"
    assert isinstance(asyncapi["info"]["version"], str)
    assert asyncapi["info"]["version"]
    assert "&id" not in asyncapi_text
    assert "$defs" not in asyncapi_text
    _assert_fields("components", asyncapi["components"], "#/components")
    for section in ("channels", "operations"):
        assert all(KEY.match(key) for key in asyncapi[section])
    for section in ("schemas", "messages"):
        assert all(KEY.match(key) for key in asyncapi["components"][section])


def test_asyncapi_servers(asyncapi: dict[str, Any]) -> None:
    assert list(asyncapi["servers"]) == list(DEFAULT_ENVS)
    for env, server in asyncapi["servers"].items():
        _assert_fields("server", server, f"#/servers/{env}")
        assert PARAMETER_KEY.match(env)
        assert server["protocol"] == "amqp"
        assert server["host"] == "127.0.0.1:5672"
        assert server["pathname"] == f"/{env}"


def test_every_ref_resolves(asyncapi: dict[str, Any]) -> None:
    refs = list(_refs(asyncapi))
    assert refs
    for where, ref in refs:
        assert ref.startswith(("#/channels/", "#/components/")), f"{where}: unexpected target {ref}"
        _resolve(asyncapi, ref)


def test_channels(asyncapi: dict[str, Any]) -> None:
    for channel_id, channel in asyncapi["channels"].items():
        where = f"#/channels/{channel_id}"
        _assert_fields("channel", channel, where)
        assert channel["messages"], f"{where} has no messages"
        placeholders = set(re.findall(r"\{([^}]*)\}", channel["address"]))
        parameters = channel.get("parameters", {})
        assert placeholders == set(parameters), f"{where}: address and parameters disagree"
        for name, parameter in parameters.items():
            _assert_fields("parameter", parameter, f"{where}/parameters/{name}")
            assert PARAMETER_KEY.match(name)
            assert RUNTIME_EXPRESSION.match(parameter["location"])
        amqp = channel["bindings"]["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"]["type"] == "topic"
        assert amqp["exchange"]["durable"] is True


def test_channel_addresses_are_routing_keys(asyncapi: dict[str, Any]) -> None:
    for model in CATALOGUE:
        channel = asyncapi["channels"][model.message_type]
        exchange = channel["bindings"]["amqp"]["exchange"]["name"]
        if model.target_field is None:
            assert channel["address"] == model.message_type
        else:
            assert channel["address"] == f"{model.message_type}.{{{model.target_field}}}"
        assert exchange == ("conveyor.commands" if model.kind == "command" else "conveyor.events")
    assert asyncapi["channels"]["firewall.disable"]["address"] == "firewall.disable.{node}"


def test_operations_reference_their_channel_and_its_messages(asyncapi: dict[str, Any]) -> None:
    actions: dict[str, set[str]] = {}
    for operation_id, operation in asyncapi["operations"].items():
        where = f"#/operations/{operation_id}"
        _assert_fields("operation", operation, where)
        assert operation["action"] in ("send", "receive")
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/")
        channel_id = channel_ref.removeprefix("#/channels/")
        channel = _resolve(asyncapi, channel_ref)
        assert operation["messages"], f"{where} has no messages"
        for message in operation["messages"]:
            prefix = f"#/channels/{channel_id}/messages/"
            assert message["$ref"].startswith(prefix), f"{where}: a message of another channel"
            assert message["$ref"].removeprefix(prefix) in channel["messages"]
        actions.setdefault(channel_id, set()).add(operation["action"])
    assert actions == {channel_id: {"send", "receive"} for channel_id in asyncapi["channels"]}
    send = asyncapi["operations"]["changeset.created.send"]["bindings"]["amqp"]
    assert send["deliveryMode"] == 2


def test_messages(asyncapi: dict[str, Any]) -> None:
    for key, message in asyncapi["components"]["messages"].items():
        where = f"#/components/messages/{key}"
        _assert_fields("message", message, where)
        _assert_fields("correlationId", message["correlationId"], f"{where}/correlationId")
        assert message["correlationId"]["location"] == "$message.payload#/correlation_id"
        assert message["contentType"] == "application/json"
        assert message["bindings"]["amqp"]["messageType"] == message["name"]
        assert _resolve(asyncapi, message["headers"]["$ref"])["type"] == "object"
        payload = message["payload"]
        assert payload["type"] == "object"
        assert payload["properties"]["type"]["const"] == message["name"]
        assert set(payload["required"]) >= {"id", "type", "schema_version", "correlation_id", "payload"}
        for example in message["examples"]:
            _assert_fields("example", example, f"{where}/examples")


def test_message_payload_is_the_specialised_envelope(asyncapi: dict[str, Any]) -> None:
    for model in CATALOGUE:
        key = f"{model.message_type}.v{model.schema_version}"
        payload = asyncapi["components"]["messages"][key]["payload"]
        expected = Envelope[model].model_json_schema()  # type: ignore[valid-type]
        assert list(payload["properties"]) == list(expected["properties"])
        payload_schema = _resolve(asyncapi, payload["properties"]["payload"]["$ref"])
        model_schema = expected["$defs"][model.__name__]
        assert list(payload_schema["properties"]) == list(model_schema["properties"])
        assert payload_schema.get("required") == model_schema.get("required")


def test_asyncapi_examples_decode_as_their_types(asyncapi: dict[str, Any]) -> None:
    for model in CATALOGUE:
        message = asyncapi["components"]["messages"][f"{model.message_type}.v{model.schema_version}"]
        (example,) = message["examples"]
        envelope = CATALOGUE.decode(json.dumps(example["payload"]).encode())
        assert type(envelope.payload) is model
        assert envelope.payload == EXAMPLES[model.message_type]


# -- the official AsyncAPI 3.0.0 schema -------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi_validator() -> Draft7Validator:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
    bundled = [(uri, DRAFT7.create_resource(document)) for uri, document in schema["definitions"].items()]
    # A registry without a ``retrieve`` function fetches nothing: a reference outside the bundle fails.
    registry = SchemaRegistry().with_resources([(schema["$id"], DRAFT7.create_resource(schema)), *bundled])
    with pytest.raises(Unresolvable):
        registry.resolver().lookup("https://asyncapi.com/definitions/3.0.0/not-bundled.json")
    return Draft7Validator(schema, registry=registry)


def test_asyncapi_matches_the_official_schema(
    asyncapi: dict[str, Any], asyncapi_validator: Draft7Validator
) -> None:
    assert _errors(asyncapi_validator, asyncapi) == []


def _set_action(document: dict[str, Any]) -> None:
    next(iter(document["operations"].values()))["action"] = "publish"  # AsyncAPI 2 wording


def _add_unknown_channel_field(document: dict[str, Any]) -> None:
    next(iter(document["channels"].values()))["routingKey"] = "changeset.*"


def _drop_info_title(document: dict[str, Any]) -> None:
    del document["info"]["title"]


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (_set_action, "action"),
        (_add_unknown_channel_field, "channels"),
        (_drop_info_title, "info"),
    ],
)
def test_the_official_schema_rejects_a_broken_document(
    asyncapi: dict[str, Any],
    asyncapi_validator: Draft7Validator,
    breakage: Callable[[dict[str, Any]], None],
    where: str,
) -> None:
    broken = copy.deepcopy(asyncapi)
    breakage(broken)
    error = best_match(asyncapi_validator.iter_errors(broken))
    assert error is not None, f"{breakage.__name__}: the schema accepted the document"
    assert where in error.json_path, f"{breakage.__name__}: rejected for another reason: {error.message}"


@pytest.fixture(scope="module")
def payload_validators(asyncapi: dict[str, Any]) -> dict[str, Draft202012Validator]:
    """Message id → a validator for its payload, the envelope schema, with its refs into the document."""
    base = "urn:conveyor:asyncapi"
    registry = SchemaRegistry().with_resource(base, DRAFT202012.create_resource(asyncapi))
    return {
        key: Draft202012Validator(
            {"$ref": f"{base}#/components/messages/{key}/payload"},
            registry=registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        for key in asyncapi["components"]["messages"]
    }


def test_asyncapi_examples_match_their_payload_schema(
    asyncapi: dict[str, Any], payload_validators: dict[str, Draft202012Validator]
) -> None:
    for key, message in asyncapi["components"]["messages"].items():
        assert message["examples"], f"{key} has no example"
        for example in message["examples"]:
            assert _errors(payload_validators[key], example["payload"]) == [], key


def test_payload_schemas_reject_a_wrong_example(
    asyncapi: dict[str, Any], payload_validators: dict[str, Draft202012Validator]
) -> None:
    message = asyncapi["components"]["messages"]["firewall.disable.v1"]
    example = message["examples"][0]["payload"]
    for path, value in [
        (("payload", "surprise"), True),  # an unknown payload field
        (("payload", "lease_s"), 0),  # out of range
        (("payload", "authorization"), {}),  # a named type from components/schemas
        (("type",), "firewall.enable"),  # another message's type
        (("id",), "not-a-uuid"),
    ]:
        wrong = copy.deepcopy(example)
        *parents, last = path
        node = wrong
        for key in parents:
            node = node[key]
        node[last] = value
        assert _errors(payload_validators["firewall.disable.v1"], wrong), f"{path} = {value!r} was accepted"


# -- schema names and versions -------------------------------------------------------------------


class Shared(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    note: str


def _payload(message_type: str, version: int, value_type: type) -> type[Payload]:
    class Detail(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")

        value: value_type  # type: ignore[valid-type]

    class Thing(Payload, message_type=message_type, schema_version=version):
        """A thing happened."""

        detail: Detail
        shared: Shared

    return Thing


def test_clashing_schema_names_get_unique_stable_names() -> None:
    registry = Registry([_payload("test.thing", 1, int), _payload("test.thing", 2, str)])
    document = yaml.safe_load(render_asyncapi(registry, {}))
    names = sorted(document["components"]["schemas"])
    assert "Shared" in names
    assert len([name for name in names if re.fullmatch(r"Detail\.[0-9a-f]{8}", name)]) == 2
    assert len([name for name in names if re.fullmatch(r"Thing\.[0-9a-f]{8}", name)]) == 2
    for _, ref in _refs(document):
        _resolve(document, ref)
    assert list(document["channels"]["test.thing"]["messages"]) == ["test.thing.v1", "test.thing.v2"]
    assert render_asyncapi(registry, {}) == render_asyncapi(Registry(reversed(list(registry))), {})


def test_several_versions_of_a_type_get_a_section_each() -> None:
    registry = Registry([_payload("test.thing", 1, int), _payload("test.thing", 2, str)])
    markdown = render_markdown(registry, {})
    assert "\n### `test.thing` v1\n" in markdown
    assert "\n### `test.thing` v2\n" in markdown
    assert "(#testthing-v2)" in markdown
    assert "_No example._" in markdown
    assert "### Shared" in markdown


# -- the command ------------------------------------------------------------------------------------


def test_main_writes_then_checks(tmp_path: Path, capsys) -> None:
    out = tmp_path / "docs"
    assert main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out / MARKDOWN_FILE}",
        f"wrote {out / ASYNCAPI_FILE}",
    ]
    for name, text in generate().items():
        assert (out / name).read_text(encoding="utf-8") == text
    assert main(["--out", str(out), "--check"]) == 0
    assert capsys.readouterr().err == ""


def test_check_names_stale_and_missing_files(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    capsys.readouterr()
    (tmp_path / MARKDOWN_FILE).write_text("# old\n", encoding="utf-8")
    (tmp_path / ASYNCAPI_FILE).unlink()
    assert main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / MARKDOWN_FILE} is stale" in err
    assert f"{tmp_path / ASYNCAPI_FILE} is missing" in err
    assert f"run `{COMMAND} --out {tmp_path}` to regenerate" in err
    assert not (tmp_path / ASYNCAPI_FILE).exists()
