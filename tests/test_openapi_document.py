"""The OpenAPI document as a tool reads it: valid OpenAPI 3.1 (openapi-spec-validator), every
parameter described, an example on every operation (each one valid against its schema),
statuses and error codes as enums, one scope sentence per operation, tool-name operation ids,
an absolute `servers` URL, and an operation per installed plugin command.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry as SchemaRegistry
from referencing.jsonschema import DRAFT202012

from queue_service.api import ServiceState, create_app
from queue_service.api.app import CORE_OPERATIONS
from queue_service.api.openapi import OpenApiCache, _payload_schema, base_url, build_openapi
from queue_service.errors import ERROR_CODES
from queue_service.plugins import Command, Plugin, Registry, load
from queue_service.statuses import ALIASES, SOURCES, STATUSES
from queue_service.store import SQLiteStore
from tests.live_server import PLUGIN_DIR
from tests.test_api_plugins import INVALID, PLUGINS

PACKAGE = Path(__file__).resolve().parents[1] / "queue_service"
DOCUMENT_URI = "urn:queue-service:openapi"
#: The names the MCP tools of issue 11 use, where REST has the same operation.
TOOL_NAMES = {
    "list_jobs",
    "get_job",
    "enqueue_job",
    "cancel_job",
    "list_plugins",
    "sync_status",
    "get_health",
    "get_openapi",
}


def _documents() -> Iterator[Any]:
    yield pytest.param(build_openapi(CORE_OPERATIONS), id="no plugins")
    echo = load([PLUGIN_DIR])
    yield pytest.param(build_openapi(CORE_OPERATIONS, echo, "http://127.0.0.1:8080"), id="echo")
    every = load([PLUGINS, INVALID])
    yield pytest.param(build_openapi(CORE_OPERATIONS, every, "https://q.example"), id="tests")


DOCUMENTS = list(_documents())


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, spec in methods.items():
            yield path, method, spec


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator picks the 3.1 validator from `openapi`


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_parameter_has_a_description(document: dict[str, Any]) -> None:
    for path, method, spec in operations(document):
        for parameter in spec["parameters"]:
            assert parameter.get("description", "").strip(), (method, path, parameter["name"])


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_operation_has_examples_that_validate(document: dict[str, Any]) -> None:
    """A success example on every operation, a request example on every operation with a
    body, an example on every error response; each one valid against its schema."""
    registry: SchemaRegistry[Any] = SchemaRegistry().with_resource(
        DOCUMENT_URI, DRAFT202012.create_resource(document)
    )
    checked = 0
    for path, method, spec in operations(document):
        where = f"{method.upper()} {path}"
        media: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        success = [s for s in spec["responses"] if s.startswith("2")]
        assert success, where
        for status, response in spec["responses"].items():
            for media_type, content in response.get("content", {}).items():
                assert "example" in content, f"{where} {status} {media_type} has no example"
                media.append((("responses", status, "content", media_type), content))
        if "requestBody" in spec:
            for media_type, content in spec["requestBody"]["content"].items():
                assert "example" in content, f"{where}: the request body has no example"
                media.append((("requestBody", "content", media_type), content))
        for where_in_op, content in media:
            pointer = "/".join(
                part.replace("~", "~0").replace("/", "~1")
                for part in ("paths", path, method, *where_in_op)
            )
            validator = Draft202012Validator(
                {"$ref": f"{DOCUMENT_URI}#/{pointer}/schema"}, registry=registry
            )
            errors = [e.message for e in validator.iter_errors(content["example"])]
            assert not errors, f"{where} {where_in_op}: {errors[:3]}"
            checked += 1
        for parameter in spec["parameters"]:
            if "example" in parameter:
                Draft202012Validator(parameter["schema"]).validate(parameter["example"])
    assert checked > 50


def test_a_missing_example_or_description_fails_the_tests() -> None:
    """The checks above are not vacuous: a document with one example or description
    removed fails them."""
    document = build_openapi(CORE_OPERATIONS)
    spec = document["paths"]["/job/{job_id}"]["get"]
    del spec["responses"]["200"]["content"]["application/json"]["example"]
    with pytest.raises(AssertionError, match="has no example"):
        test_every_operation_has_examples_that_validate(document)
    document = build_openapi(CORE_OPERATIONS)
    del document["paths"]["/job/{job_id}"]["get"]["parameters"][0]["description"]
    with pytest.raises(AssertionError, match="job_id"):
        test_every_parameter_has_a_description(document)


def _status_schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    [parameter] = [p for p in document["paths"]["/jobs"]["get"]["parameters"] if p["name"] == name]
    schema: dict[str, Any] = parameter["schema"]
    return schema


def test_statuses_are_an_enum_with_the_aliases_apart() -> None:
    document = build_openapi(CORE_OPERATIONS)
    schema = _status_schema(document, "status")
    assert schema["type"] == "string"
    names, aliases, pattern = schema["anyOf"]
    assert names["enum"] == list(STATUSES) and len(STATUSES) == 7
    assert aliases["enum"] == list(ALIASES)
    assert "pending=queued" in aliases["description"]
    # The last branch admits what the server also accepts: any case, comma lists.
    assert re.fullmatch(pattern["pattern"], "Failed, TIMED_OUT,ok")
    assert _status_schema(document, "source")["anyOf"][0]["enum"] == list(SOURCES)


def test_error_codes_are_an_enum_of_every_code() -> None:
    document = build_openapi(CORE_OPERATIONS)
    code = document["components"]["schemas"]["ErrorBody"]["properties"]["code"]
    assert code["enum"] == list(ERROR_CODES)


def _emitted_codes() -> tuple[set[str], set[str]]:
    """(codes passed as literals to ApiError / error_response / error_body anywhere in the
    package, every string literal outside errors.py)."""
    emitted: set[str] = set()
    literals: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ("ApiError", "error_response", "error_body") and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        emitted.add(first.value)
            if path.name != "errors.py" and isinstance(node, ast.Constant):
                if isinstance(node.value, str):
                    literals.add(node.value)
    return emitted, literals


def test_the_code_enum_is_exactly_what_the_code_emits() -> None:
    """Every code the server passes to an error constructor is in the enum, and every code
    in the enum appears in the code outside the registry (none is dead)."""
    emitted, literals = _emitted_codes()
    assert len(emitted) > 8, emitted
    assert emitted <= set(ERROR_CODES), emitted - set(ERROR_CODES)
    assert set(ERROR_CODES) <= literals, set(ERROR_CODES) - literals


@pytest.mark.parametrize("document", DOCUMENTS)
def test_one_scope_sentence_per_operation(document: dict[str, Any]) -> None:
    for path, method, spec in operations(document):
        sentences = re.findall(r"Needs [^.]*\.", spec["description"])
        assert len(sentences) == 1, (method, path, sentences)
        [sentence] = sentences
        if spec["security"]:
            assert "`" in sentence or "any valid token" in sentence, sentence
        else:
            assert sentence == "Needs no token.", sentence


@pytest.mark.parametrize("document", DOCUMENTS)
def test_operation_ids_read_as_tool_names(document: dict[str, Any]) -> None:
    ids = [spec["operationId"] for _, _, spec in operations(document)]
    assert len(ids) == len(set(ids))
    for operation_id in ids:
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,63}", operation_id.lower()), operation_id
    assert TOOL_NAMES <= set(ids)


def test_each_installed_command_has_its_own_operation() -> None:
    registry = load([PLUGINS, INVALID])
    document = build_openapi(CORE_OPERATIONS, registry)
    generic = document["paths"]["/plugin/{plugin}/{command}"]["post"]
    assert generic["operationId"] == "enqueue_job"
    commands = {
        (plugin.name, command.name): command
        for plugin in registry.valid()
        for command in plugin.commands
    }
    assert ("strict", "lookup") in commands
    for (plugin, name), command in commands.items():
        spec = document["paths"][f"/plugin/{plugin}/{name}"]["post"]
        assert not spec["parameters"]
        body = spec["requestBody"]["content"]["application/json"]["schema"]
        payload = body["properties"]["payload"]
        own = dict(command.input_schema or {})
        if own:
            assert {k: v for k, v in payload.items() if k != "description"} == {
                k: v for k, v in own.items() if k != "description"
            }
        assert payload["description"]
        needed = "plugin:rw" if str(command.type) == "write" else "plugin:ro"
        assert f"`{needed}`" in spec["description"]
        assert set(spec["responses"]) >= {"200", "202", "403"}
        assert "404" not in spec["responses"] and "409" not in spec["responses"]
    # A command that refuses an empty payload makes the body required.
    strict = document["paths"]["/plugin/strict/lookup"]["post"]["requestBody"]
    assert strict["required"] is True
    assert strict["content"]["application/json"]["schema"]["required"] == ["payload"]
    echo = document["paths"]["/plugin/ok/poll"]["post"]["requestBody"]
    assert echo["required"] is False
    # Invalid plugins have no operation.
    assert not any(path.startswith("/plugin/no_commands/") for path in document["paths"])


def test_a_schema_with_its_own_refs_is_its_own_resource() -> None:
    """A command's input_schema with `$ref`s resolves them inside itself, not against the
    document: it gets an `$id`, and a payload checked through the document is checked
    against the referenced definition."""
    schema = {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/item"}},
        "required": ["item"],
        "$defs": {"item": {"type": "integer", "minimum": 3}},
    }
    plugin = cast(Plugin, SimpleNamespace(name="refs"))
    command = cast(Command, SimpleNamespace(name="take", input_schema=schema))
    resolved = _payload_schema(plugin, command)
    assert resolved is not None and resolved["$id"].startswith("urn:queue-service:plugin:")
    validator = Draft202012Validator({"$ref": "#/$defs/x", "$defs": {"x": resolved}})
    assert validator.is_valid({"item": 3}) and not validator.is_valid({"item": 2})


# -- served: absolute servers, cached ------------------------------------------------------


@pytest.fixture
async def client(store: SQLiteStore) -> Any:
    state = ServiceState.for_store(store, registry=load([PLUGIN_DIR]))
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.example:8080") as c:
        yield c


@pytest.mark.anyio
async def test_the_served_document_names_the_server_it_was_reached_at(
    client: httpx.AsyncClient,
) -> None:
    served = (await client.get("/openapi.json")).json()
    assert served["servers"][0]["url"] == "http://api.example:8080"
    assert "/plugin/echo/poll" in served["paths"]
    validate(served)
    other = (await client.get("/openapi.json", headers={"host": "[::1]:9000"})).json()
    assert other["servers"][0]["url"] == "http://[::1]:9000"
    # A Host header that is not a host name falls back to the address served on.
    odd = (await client.get("/openapi.json", headers={"host": "a b/c"})).json()
    assert odd["servers"][0]["url"] != "http://a b/c"
    assert odd["servers"][0]["url"].startswith("http://")


def _scope(headers: list[tuple[bytes, bytes]], **extra: Any) -> dict[str, Any]:
    return {"type": "http", "headers": headers, "scheme": "http", **extra}


def test_base_url_from_the_request() -> None:
    assert base_url(_scope([(b"host", b"q.example")])) == "http://q.example"
    # The scheme is the ASGI scheme: uvicorn rewrites it from X-Forwarded-Proto only for a
    # proxy in forwarded_allow_ips; the header itself is never read here.
    forwarded = [(b"host", b"q.example"), (b"x-forwarded-proto", b"https")]
    assert base_url(_scope(forwarded)) == "http://q.example"
    assert base_url(_scope(forwarded, scheme="https")) == "https://q.example"
    assert base_url(_scope([(b"host", b"q.example")], root_path="/queue")) == (
        "http://q.example/queue"
    )
    hostile = [(b"host", b"x\r\nSet-Cookie: a=b"), (b"host", b"second")]
    assert base_url(_scope(hostile, server=("10.0.0.5", 8080))) == "http://10.0.0.5:8080"
    assert base_url(_scope([(b"host", b"h" * 300)])) is None
    assert base_url(_scope([], server=("::1", 80))) == "http://[::1]:80"


def test_the_document_is_built_once_per_registry_and_cached_per_base_url() -> None:
    cache = OpenApiCache(CORE_OPERATIONS)
    registry = load([PLUGIN_DIR])
    first = cache.body(registry, "http://a")
    assert cache.body(registry, "http://a") is first
    assert json.loads(cache.body(registry, "http://b"))["servers"][0]["url"] == "http://b"
    for i in range(3 * OpenApiCache.MAX_BASES):
        cache.body(registry, f"http://host-{i}")
    assert len(cache._bodies) == OpenApiCache.MAX_BASES
    other = Registry(())
    assert "/plugin/echo/poll" not in json.loads(cache.body(other, "http://a"))["paths"]
