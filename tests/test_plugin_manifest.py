"""Plugin discovery, manifest validation and payload validation."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from queue_service.plugins import (
    ManifestError,
    PayloadError,
    PluginUnavailable,
    UnknownCommand,
    UnknownPlugin,
    load,
    parse_manifest,
)

TESTS = Path(__file__).parent
VALID_DIR = TESTS / "plugins"
INVALID_DIR = TESTS / "plugins_invalid"
SAMPLE_DIR = TESTS.parent / "plugins"

SCRIPT = '#!/usr/bin/env python3\nprint(\'{"status": "ok", "result": 1}\')\n'


def base_manifest(name: str = "demo", **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "manifest_spec": "ductile.plugin",
        "manifest_version": 1,
        "name": name,
        "version": "1.2.3",
        "protocol": 2,
        "entrypoint": "run.py",
        "description": "a demo",
        "commands": [
            {
                "name": "poll",
                "type": "read",
                "description": "poll it",
                "input_schema": {"type": "object"},
            }
        ],
    }
    doc.update(overrides)
    return doc


def make_plugin(root: Path, folder: str, doc: dict[str, Any], *, script: bool = True) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "manifest.yaml").write_text(yaml.safe_dump(doc))
    if script:
        entry = path / "run.py"
        entry.write_text(SCRIPT)
        entry.chmod(0o755)
    return path


# --- the shipped plugin folders ------------------------------------------------------


def test_valid_test_plugins_all_load_clean(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="queue_service.plugins")
    registry = load([VALID_DIR])
    folders = sorted(p.name for p in VALID_DIR.iterdir() if (p / "manifest.yaml").is_file())
    assert [p.name for p in registry.all()] == folders
    assert all(p.valid for p in registry.all()), [(p.name, p.error) for p in registry.all()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for name in ("ok", "error", "noretry", "exit78", "sleepy", "stubborn", "garbage", "huge"):
        assert registry.get(name) is not None
    for name in ("stateful", "stderr_flood", "ledger", "violations", "introspect"):
        assert registry.get(name) is not None


def test_sample_echo_plugin_is_valid() -> None:
    registry = load([SAMPLE_DIR])
    echo = registry.get("echo")
    assert echo is not None and echo.valid
    assert {c.name: c.type for c in echo.commands} == {
        "poll": "read",
        "handle": "write",
        "health": "read",
    }
    assert echo.entrypoint == (SAMPLE_DIR / "echo" / "run.py").resolve()
    assert os.access(echo.entrypoint, os.X_OK)


EXPECTED_INVALID = {
    "bad_yaml": "not valid YAML at line 8",
    "wrong_protocol": "protocol must be 2, got 1",
    "no_commands": "commands must be a non-empty list",
    "bad_command_type": "command 'poll': type must be read or write, got 'delete'",
    "bad_schema": "input_schema is not a valid JSON Schema",
    "escape": "escapes the plugin folder",
    "not_executable": "is not executable",
    "missing_entrypoint": "entrypoint 'nowhere.py' not found",
    "needs_config": "missing required config key(s) api_key",
}


def test_invalid_plugins_are_listed_with_one_line_reasons(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_service.plugins")
    registry = load([INVALID_DIR])
    found = {p.name: p for p in registry.all()}
    assert set(found) == set(EXPECTED_INVALID)
    for name, reason in EXPECTED_INVALID.items():
        plugin = found[name]
        assert not plugin.valid
        assert plugin.error is not None and reason in plugin.error, (name, plugin.error)
        assert "\n" not in plugin.error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Exactly one clear log line per invalid plugin, naming it and the reason.
    assert len(warnings) == len(EXPECTED_INVALID)
    for name in EXPECTED_INVALID:
        assert sum(f"plugin {name} at " in w for w in warnings) == 1
    assert all("\n" not in w for w in warnings)


def test_bad_schema_error_points_into_the_schema() -> None:
    plugin = load([INVALID_DIR]).get("bad_schema")
    assert plugin is not None and plugin.error is not None
    assert "$.properties.count.type" in plugin.error


def test_invalid_manifest_keeps_what_it_can_for_listing() -> None:
    registry = load([INVALID_DIR])
    broken = registry.get("bad_yaml")
    assert broken is not None and broken.manifest is None
    assert broken.version is None and broken.commands == ()
    needs = registry.get("needs_config")
    assert needs is not None and needs.manifest is not None
    assert needs.version == "0.1.0" and [c.name for c in needs.commands] == ["poll"]


def test_required_config_makes_plugin_valid_and_reaches_plugin() -> None:
    registry = load([INVALID_DIR], {"needs_config": {"api_key": "s3cret", "region": "eu"}})
    plugin = registry.get("needs_config")
    assert plugin is not None and plugin.valid
    assert dict(plugin.config) == {"api_key": "s3cret", "region": "eu"}


def test_undeclared_config_key_and_config_for_missing_plugin_only_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = load([VALID_DIR], {"ok": {"typo_key": 1}, "ghost": {"x": 1}})
    ok = registry.get("ok")
    assert ok is not None and ok.valid
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("typo_key" in m for m in messages)
    assert any("'ghost'" in m for m in messages)


def test_a_broken_plugin_never_hides_the_good_ones() -> None:
    registry = load([INVALID_DIR, VALID_DIR])
    ok = registry.get("ok")
    assert ok is not None and ok.valid
    assert {p.name for p in registry.valid()} == {
        p.name for p in VALID_DIR.iterdir() if (p / "manifest.yaml").is_file()
    }


# --- discovery rules ----------------------------------------------------------------


def test_duplicate_name_first_dir_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = make_plugin(tmp_path / "a", "one", base_manifest("twin", version="1.0"))
    second = make_plugin(tmp_path / "b", "two", base_manifest("twin", version="2.0"))
    registry = load([tmp_path / "a", tmp_path / "b"])
    owner = registry.get("twin")
    assert owner is not None and owner.valid and owner.folder == first.absolute()
    assert owner.version == "1.0"
    twins = [p for p in registry.all() if p.name == "twin"]
    assert len(twins) == 2
    loser = next(p for p in twins if p.folder == second.absolute())
    assert not loser.valid
    assert loser.error == f"duplicate plugin name 'twin': already defined by {first.absolute()}"
    assert [p.folder for p in registry.valid()] == [first.absolute()]
    assert any("duplicate plugin name" in r.getMessage() for r in caplog.records)


def test_duplicate_within_one_dir_first_folder_by_name_wins(tmp_path: Path) -> None:
    make_plugin(tmp_path, "b_folder", base_manifest("same", version="b"))
    make_plugin(tmp_path, "a_folder", base_manifest("same", version="a"))
    owner = load([tmp_path]).get("same")
    assert owner is not None and owner.version == "a"


def test_missing_dir_hidden_and_plain_folders_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_plugin(tmp_path, ".hidden", base_manifest("hidden"))
    make_plugin(tmp_path, "_private", base_manifest("private"))
    (tmp_path / "not_a_plugin").mkdir()
    (tmp_path / "stray_file.txt").write_text("x")
    make_plugin(tmp_path, "real", base_manifest("real"))
    registry = load([tmp_path / "nope", tmp_path])
    assert [p.name for p in registry.all()] == ["real"]
    assert any("does not exist" in r.getMessage() for r in caplog.records)


def test_entrypoint_symlink_out_of_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text(SCRIPT)
    outside.chmod(0o755)
    folder = make_plugin(tmp_path / "dir", "linky", base_manifest("linky"), script=False)
    (folder / "run.py").symlink_to(outside)
    plugin = load([tmp_path / "dir"]).get("linky")
    assert plugin is not None and plugin.error == "entrypoint 'run.py' escapes the plugin folder"


def test_absolute_entrypoint_is_refused(tmp_path: Path) -> None:
    make_plugin(tmp_path, "abs", base_manifest("abs", entrypoint="/bin/true"))
    plugin = load([tmp_path]).get("abs")
    assert plugin is not None and plugin.error is not None
    assert "must be relative to the plugin folder" in plugin.error


def test_entrypoint_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "dirent", base_manifest("dirent", entrypoint="bin"))
    (folder / "bin").mkdir()
    plugin = load([tmp_path]).get("dirent")
    assert plugin is not None and plugin.error == "entrypoint 'bin' is not a regular file"


def test_world_writable_plugin_folder_is_refused(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "open", base_manifest("open"))
    folder.chmod(0o777)
    plugin = load([tmp_path]).get("open")
    assert plugin is not None and plugin.error is not None
    assert f"plugin folder {folder} is writable by group or others (mode 0777)" in plugin.error


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_group_or_other_writable_plugin_folder_is_refused(tmp_path: Path, mode: int) -> None:
    folder = make_plugin(tmp_path, "open", base_manifest("open"))
    folder.chmod(mode)
    plugin = load([tmp_path]).get("open")
    assert plugin is not None and not plugin.valid and plugin.error is not None
    assert f"plugin folder {folder} is writable by group or others" in plugin.error


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_group_or_other_writable_entrypoint_is_refused(tmp_path: Path, mode: int) -> None:
    folder = make_plugin(tmp_path, "open", base_manifest("open"))
    (folder / "run.py").chmod(mode)
    plugin = load([tmp_path]).get("open")
    assert plugin is not None and plugin.error is not None
    assert f"entrypoint {folder / 'run.py'} is writable by group or others" in plugin.error


def test_writable_folder_between_plugin_folder_and_entrypoint_is_refused(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "nested", base_manifest("nested", entrypoint="bin/run.py"))
    (folder / "bin").mkdir()
    (folder / "run.py").rename(folder / "bin" / "run.py")
    assert load([tmp_path]).get("nested").valid  # type: ignore[union-attr]
    (folder / "bin").chmod(0o777)
    plugin = load([tmp_path]).get("nested")
    assert plugin is not None and plugin.error is not None
    assert f"{folder / 'bin'} is writable by group or others" in plugin.error


def test_sticky_world_writable_plugin_dir_refuses_every_plugin_in_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "dir"
    make_plugin(root, "one", base_manifest("one"))
    make_plugin(root, "two", base_manifest("two"))
    root.chmod(0o1777)
    registry = load([root])
    assert [p.name for p in registry.all()] == ["one", "two"]
    for plugin in registry.all():
        assert not plugin.valid and plugin.error is not None
        assert f"plugin dir {root} is writable by group or others (mode 1777)" in plugin.error
    assert any(str(root) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("part", ["folder", "entrypoint", "dir"])
def test_plugin_parts_owned_by_another_user_are_refused(tmp_path: Path, part: str) -> None:
    root = tmp_path / "dir"
    folder = make_plugin(root, "theirs", base_manifest("theirs"))
    target = {"folder": folder, "entrypoint": folder / "run.py", "dir": root}[part]
    os.chown(target, 54321, 54321)
    plugin = load([root]).get("theirs")
    assert plugin is not None and plugin.error is not None
    assert f"{target} is owned by uid 54321" in plugin.error


def test_safe_modes_from_a_git_checkout_are_accepted(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "checkout", base_manifest("checkout"))
    folder.chmod(0o755)
    (folder / "manifest.yaml").chmod(0o644)
    (folder / "run.py").chmod(0o755)
    plugin = load([tmp_path]).get("checkout")
    assert plugin is not None and plugin.valid, plugin


def test_manifest_name_need_not_match_folder(tmp_path: Path) -> None:
    make_plugin(tmp_path, "folder_x", base_manifest("named_y"))
    registry = load([tmp_path])
    assert registry.get("named_y") is not None and registry.get("folder_x") is None


# --- manifest fields ----------------------------------------------------------------


def test_defaults_and_unknown_keys_are_kept() -> None:
    doc = base_manifest(
        fact_outputs=[{"when": {"command": "poll"}, "from": "state_updates"}],
        stopwatch={"max_subs": 3},
    )
    doc["commands"][0]["future_field"] = {"x": 1}
    del doc["description"]
    manifest = parse_manifest(doc)
    assert manifest.concurrency_safe is True
    assert manifest.description == ""
    assert manifest.raw["fact_outputs"] == doc["fact_outputs"]
    assert manifest.raw["stopwatch"] == {"max_subs": 3}
    command = manifest.command("poll")
    assert command is not None and command.extra == {"future_field": {"x": 1}}
    assert command.idempotent is None and command.retry_safe is None
    assert manifest.required_config == () and manifest.optional_config == ()


def test_all_declared_fields_are_read() -> None:
    doc = base_manifest(concurrency_safe=False, config_keys={"required": ["a"], "optional": ["b"]})
    doc["commands"].append(
        {
            "name": "handle",
            "type": "write",
            "description": "handle it",
            "input_schema": {"type": "object", "required": ["x"]},
            "output_schema": {"type": "object"},
            "idempotent": False,
            "retry_safe": True,
            "values": {"consume": ["payload.x"]},
        }
    )
    manifest = parse_manifest(doc)
    assert manifest.concurrency_safe is False
    assert manifest.required_config == ("a",) and manifest.optional_config == ("b",)
    handle = manifest.command("handle")
    assert handle is not None
    assert (handle.type, handle.description, handle.idempotent, handle.retry_safe) == (
        "write",
        "handle it",
        False,
        True,
    )
    assert handle.output_schema == {"type": "object"}
    assert handle.values == {"consume": ["payload.x"]}
    assert manifest.command_names == ("poll", "handle")
    assert manifest.command("nope") is None


def test_numeric_version_is_kept_as_text() -> None:
    assert parse_manifest(base_manifest(version=1.5)).version == "1.5"


def _without(key: str) -> dict[str, Any]:
    doc = base_manifest()
    del doc[key]
    return doc


def _command_with(**fields: Any) -> dict[str, Any]:
    doc = base_manifest()
    doc["commands"][0].update(fields)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param([1, 2], "manifest must be a YAML mapping", id="not-a-mapping"),
        pytest.param(_without("manifest_spec"), "manifest_spec is required", id="no-spec"),
        pytest.param(
            base_manifest(manifest_spec="other"),
            "manifest_spec must be 'ductile.plugin', got 'other'",
            id="wrong-spec",
        ),
        pytest.param(
            base_manifest(manifest_spec=5), "manifest_spec must be 'ductile.plugin'", id="int-spec"
        ),
        pytest.param(
            base_manifest(manifest_version=2), "manifest_version must be 1, got 2", id="mv2"
        ),
        pytest.param(
            base_manifest(manifest_version=True), "manifest_version must be 1", id="mv-bool"
        ),
        pytest.param(_without("name"), "name is required", id="no-name"),
        pytest.param(base_manifest(name="a/b"), "name must be 1-64 characters", id="bad-name"),
        pytest.param(_without("version"), "version is required", id="no-version"),
        pytest.param(base_manifest(version=True), "version must be", id="bool-version"),
        pytest.param(_without("protocol"), "protocol is required", id="no-protocol"),
        pytest.param(base_manifest(protocol="2"), "protocol must be 2, got '2'", id="str-proto"),
        pytest.param(_without("entrypoint"), "entrypoint is required", id="no-entrypoint"),
        pytest.param(base_manifest(description=5), "description must be text", id="desc"),
        pytest.param(
            base_manifest(concurrency_safe="yes"), "concurrency_safe must be true or false", id="cs"
        ),
        pytest.param(_without("commands"), "commands must be a non-empty list", id="no-cmds"),
        pytest.param(base_manifest(commands=["poll"]), "commands[0] must be an object", id="str"),
        pytest.param(_command_with(name="9lives"), "commands[0].name must be", id="cmd-name"),
        pytest.param(_command_with(type=None), "command 'poll': type is required", id="no-type"),
        pytest.param(
            _command_with(idempotent="yes"), "command 'poll': idempotent must be true", id="idem"
        ),
        pytest.param(
            _command_with(input_schema="object"),
            "command 'poll': input_schema must be an object",
            id="schema-str",
        ),
        pytest.param(
            _command_with(input_schema=True), "input_schema must be an object", id="schema-bool"
        ),
        pytest.param(
            _command_with(input_schema={"$schema": "http://example.com/mine", "type": "object"}),
            "unknown $schema 'http://example.com/mine'",
            id="unknown-dialect",
        ),
        pytest.param(
            _command_with(input_schema={"$ref": "http://example.com/s.json"}),
            "$ref 'http://example.com/s.json' is not local",
            id="remote-ref",
        ),
        pytest.param(
            _command_with(input_schema={"type": "object", "minProperties": -1}),
            "input_schema is not a valid JSON Schema: -1 is less than the minimum of 0",
            id="bad-keyword",
        ),
        pytest.param(
            base_manifest(config_keys=["a"]), "config_keys must be an object", id="ck-list"
        ),
        pytest.param(
            base_manifest(config_keys={"required": "a"}),
            "config_keys.required must be a list of key names",
            id="ck-str",
        ),
    ],
)
def test_invalid_fields_are_named(doc: Any, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(doc)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    doc = base_manifest(protocol=1, concurrency_safe="yes", config_keys={"optional": "a"})
    del doc["version"]
    doc["commands"][0].update(type="delete", idempotent="no")
    doc["commands"].append({"name": "9lives", "type": "read"})
    doc["commands"].append("health")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(doc)
    message = str(caught.value)
    assert message.split("; ") == [
        "version is required (a version string such as 1.0.0)",
        "protocol must be 2, got 1",
        "concurrency_safe must be true or false, got 'yes'",
        "command 'poll': type must be read or write, got 'delete'",
        "command 'poll': idempotent must be true or false, got 'no'",
        "commands[1].name must be a letter, then letters, digits, _ or - (max 64), got '9lives'",
        "commands[2] must be an object with name and type",
        "config_keys.optional must be a list of key names, got 'a'",
    ]
    assert caught.value.plugin_name == "demo"


def test_a_schema_with_braces_is_reported_verbatim() -> None:
    schema = {"type": "object", "properties": {"{x}": {"type": "nope"}}}
    with pytest.raises(ManifestError) as caught:
        parse_manifest(_command_with(input_schema=schema))
    assert "input_schema is not a valid JSON Schema" in str(caught.value)
    assert "(at $.properties['{x}'].type)" in str(caught.value)


def test_duplicate_command_is_refused() -> None:
    doc = base_manifest()
    doc["commands"].append(copy.deepcopy(doc["commands"][0]))
    with pytest.raises(ManifestError, match=r"commands\[1\]: duplicate command name 'poll'"):
        parse_manifest(doc)


# --- input schemas and payload validation --------------------------------------------


def _command(schema: Any) -> Any:
    doc = base_manifest()
    if schema is None:
        del doc["commands"][0]["input_schema"]
    else:
        doc["commands"][0]["input_schema"] = schema
    command = parse_manifest(doc).command("poll")
    assert command is not None
    return command


def test_missing_input_schema_accepts_any_payload() -> None:
    command = _command(None)
    assert command.input_schema is None
    assert command.validate_payload({"anything": [1, 2]}) is None
    assert command.validate_payload(None) is None


def test_compact_schema_is_expanded_like_ductile() -> None:
    command = _command({"message": "string", "count": {"type": "integer", "minimum": 1}})
    assert command.input_schema == {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "count": {"type": "integer", "minimum": 1},
        },
    }
    assert command.validate_payload({"message": "hi", "count": 2}) is None
    assert command.validate_payload({"message": 5}) == PayloadError(
        "5 is not of type 'string'", "$.message"
    )


def test_compact_schema_may_use_annotation_words_as_property_names() -> None:
    command = _command({"title": "string", "format": "integer"})
    assert command.input_schema == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "format": {"type": "integer"}},
    }
    assert command.validate_payload({"format": "x"}) == PayloadError(
        "'x' is not of type 'integer'", "$.format"
    )


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"description": "free text"},
        {"format": "email"},
        {"minimum": 1},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    ],
)
def test_annotation_only_schemas_stay_real_schemas(schema: dict[str, Any]) -> None:
    assert _command(schema).input_schema == schema


def test_real_schema_without_type_is_not_treated_as_compact() -> None:
    schema = {"properties": {"a": {"type": "string"}}, "required": ["a"]}
    command = _command(schema)
    assert command.input_schema == schema
    assert command.validate_payload([1]) is None  # no type keyword: arrays pass
    assert command.validate_payload({}) == PayloadError("'a' is a required property", "$")


def test_payload_errors_carry_message_and_json_path() -> None:
    command = _command(
        {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"type": "integer"}},
                "mode": {"enum": ["fast", "slow"]},
            },
            "additionalProperties": False,
        }
    )
    assert command.validate_payload({"items": [1, 2], "mode": "fast"}) is None
    assert command.validate_payload({"items": [1, "two"]}) == PayloadError(
        "'two' is not of type 'integer'", "$.items[1]"
    )
    error = command.validate_payload({"mode": "medium"})
    assert error is not None and error.path == "$.mode"
    assert "'medium' is not one of ['fast', 'slow']" in error.message
    error = command.validate_payload({"extra": 1})
    assert error is not None and error.path == "$"
    assert "Additional properties are not allowed ('extra' was unexpected)" in error.message
    assert command.validate_payload("text") == PayloadError("'text' is not of type 'object'", "$")


def test_format_keyword_is_checked() -> None:
    command = _command({"type": "object", "properties": {"email": {"format": "email"}}})
    assert command.validate_payload({"email": "a@example.com"}) is None
    assert command.validate_payload({"email": "nope"}) == PayloadError(
        "'nope' is not a 'email'", "$.email"
    )


def test_declared_dialect_is_used() -> None:
    # Draft 7 ignores the 2020-12 keyword prefixItems; the default dialect honours it.
    schema = {"type": "array", "prefixItems": [{"type": "integer"}]}
    assert _command(schema).validate_payload(["x"]) is not None
    draft7 = _command({**schema, "$schema": "http://json-schema.org/draft-07/schema#"})
    assert draft7.validate_payload(["x"]) is None


def test_local_refs_resolve() -> None:
    command = _command(
        {
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/positive"}},
            "$defs": {"positive": {"type": "integer", "minimum": 1}},
        }
    )
    assert command.validate_payload({"n": 3}) is None
    assert command.validate_payload({"n": 0}) == PayloadError(
        "0 is less than the minimum of 1", "$.n"
    )


def test_dangling_local_ref_is_reported_not_raised() -> None:
    command = _command({"type": "object", "properties": {"n": {"$ref": "#/$defs/missing"}}})
    error = command.validate_payload({"n": 1})
    assert error is not None and error.message.startswith("input_schema cannot be evaluated")


def test_huge_payload_does_not_make_a_huge_message() -> None:
    command = _command({"type": "array"})
    error = command.validate_payload({"k": "x" * 100_000})
    assert error is not None and error.path == "$"
    assert len(error.message) <= 300 and error.message.endswith("…")


# --- the registry API ---------------------------------------------------------------


def test_resolve_and_validate_through_registry() -> None:
    registry = load([VALID_DIR, INVALID_DIR])
    plugin, command = registry.resolve("ok", "poll")
    assert plugin.name == "ok" and command.name == "poll" and command.type == "read"
    assert command.validate_payload({"a": 1}) is None
    assert command.validate_payload([1]) == PayloadError("[1] is not of type 'object'", "$")

    with pytest.raises(UnknownPlugin) as unknown:
        registry.resolve("nope", "poll")
    assert unknown.value.param == "plugin" and unknown.value.value == "nope"
    assert "ok" in unknown.value.allowed and "needs_config" not in unknown.value.allowed
    assert list(unknown.value.allowed) == sorted(unknown.value.allowed)

    with pytest.raises(UnknownCommand) as no_command:
        registry.resolve("ok", "explode")
    assert no_command.value.param == "command"
    assert no_command.value.allowed == ("handle", "health", "poll")
    assert str(no_command.value) == "plugin 'ok' has no command 'explode'"

    with pytest.raises(PluginUnavailable) as unavailable:
        registry.resolve("needs_config", "poll")
    assert unavailable.value.reason.startswith("missing required config key(s) api_key")
    assert isinstance(unavailable.value, LookupError)


def test_all_is_sorted_and_get_returns_invalid_plugins_too(tmp_path: Path) -> None:
    shutil.copytree(VALID_DIR / "ok", tmp_path / "aaa")
    shutil.copytree(INVALID_DIR / "wrong_protocol", tmp_path / "zzz")
    shutil.copytree(INVALID_DIR / "bad_yaml", tmp_path / "mmm")
    registry = load([tmp_path])
    # Invalid plugins keep the manifest's name when it could be read, else the folder's.
    assert [p.name for p in registry.all()] == ["mmm", "ok", "wrong_protocol"]
    wrong = registry.get("wrong_protocol")
    assert wrong is not None and not wrong.valid and wrong.folder == tmp_path / "zzz"
    assert registry.get("zzz") is None
