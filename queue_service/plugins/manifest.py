"""Plugin manifests (ductile plugin protocol 2): parse and validate one `manifest.yaml`.

A manifest is checked field by field, and the first problem becomes a one-line
`ManifestError` naming the field. Unknown keys are ignored for behaviour but kept
in `Manifest.raw` (and `Command.extra`), so echoing a manifest loses nothing.

Compatibility notes (ductile reads manifests the same way):
- `description` and a command's `input_schema` are optional. A missing
  `input_schema` accepts any payload.
- A "compact" input schema, a map of property name to type name such as
  `{message: string, count: integer}`, is expanded to
  `{type: object, properties: {message: {type: string}, ...}}`. A map with a
  structural JSON Schema keyword (type, properties, $ref, anyOf, ...) or with a value
  that is neither a type name nor a map is a real schema and is left alone. Unlike
  ductile, an empty `{}` stays the schema that accepts anything.
- `version` may be written as a YAML number (`version: 1.0`); it is kept as text.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable
from referencing.jsonschema import UnknownDialect, specification_with

from queue_service.plugins.trust import ownership_problem

MANIFEST_FILENAME = "manifest.yaml"
MANIFEST_SPEC = "ductile.plugin"
MANIFEST_VERSION = 1
PROTOCOL_VERSION = 2
#: Manifests larger than this are refused before YAML parsing.
MANIFEST_MAX_BYTES = 1024 * 1024

CommandType = Literal["read", "write"]
COMMAND_TYPES: tuple[str, ...] = ("read", "write")

# Plugin names appear in URL paths (/plugin/{plugin}/{command}); keep them path-safe.
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Same rule as ductile: a letter, then letters, digits, '_' or '-'.
_COMMAND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_MESSAGE_CAP = 300

# Keywords whose presence marks a map as a real JSON Schema, never the compact form.
# Annotation keywords (title, description, format, ...) are not in this set: in the
# compact form they are ordinary property names, e.g. `{title: string}`.
_STRUCTURAL_KEYWORDS = frozenset(
    {
        "$schema", "$id", "$ref", "$defs", "$anchor", "$comment", "$dynamicRef",
        "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "$vocabulary",
        "definitions", "type", "properties", "required", "additionalProperties",
        "patternProperties", "propertyNames", "unevaluatedProperties",
        "dependentRequired", "dependentSchemas", "dependencies", "items", "prefixItems",
        "additionalItems", "unevaluatedItems", "contains", "contentSchema", "enum",
        "const", "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
    }
)  # fmt: skip
_JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


class ManifestError(ValueError):
    """A manifest that cannot be used. `str()` is one line naming the problem.

    `plugin_name` is the manifest's `name` when that much could be read, else None.
    """

    def __init__(self, message: str, plugin_name: str | None = None) -> None:
        super().__init__(message)
        self.plugin_name = plugin_name


@dataclass(frozen=True, slots=True)
class PayloadError:
    """Why a payload does not match a command's input_schema.

    `message` is the JSON Schema validator's message (shortened when it would quote a
    large payload); `path` is the JSON path of the offending value, `$` for the root.
    """

    message: str
    path: str


@dataclass(frozen=True, slots=True)
class Command:
    """One command a plugin declares.

    `input_schema` is the effective schema (compact form expanded), or None when the
    manifest gives none, in which case every payload is accepted.
    """

    name: str
    type: CommandType
    description: str = ""
    input_schema: Mapping[str, Any] | None = None
    output_schema: Any = None
    idempotent: bool | None = None
    retry_safe: bool | None = None
    values: Any = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    _validator: Validator | None = field(default=None, compare=False, repr=False)

    def validate_payload(self, payload: Any) -> PayloadError | None:
        """Check `payload` against `input_schema` (format keywords included).

        Returns None when the payload is acceptable, otherwise the most relevant
        validation error (jsonschema's `best_match`). A schema whose `$ref` cannot be
        resolved is reported the same way, since the payload cannot be accepted.
        """
        if self._validator is None:
            return None
        try:
            error = best_match(self._validator.iter_errors(payload))
        except Unresolvable as exc:
            return PayloadError(_shorten(f"input_schema cannot be evaluated: {exc}"), "$")
        if error is None:
            return None
        return PayloadError(_shorten(error.message), error.json_path)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest. `raw` is the parsed document, unknown keys included."""

    name: str
    version: str
    description: str
    entrypoint: str
    concurrency_safe: bool
    commands: tuple[Command, ...]
    required_config: tuple[str, ...] = ()
    optional_config: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def command(self, name: str) -> Command | None:
        """The declared command called `name`, or None."""
        for command in self.commands:
            if command.name == name:
                return command
        return None

    @property
    def command_names(self) -> tuple[str, ...]:
        return tuple(command.name for command in self.commands)


def read_manifest(folder: Path) -> Manifest:
    """Read, parse and validate `folder/manifest.yaml`, including the entrypoint on disk.

    Raises ManifestError (one line) for any problem: unreadable or oversized file,
    YAML syntax, a missing or wrong field, an input_schema that is not a valid JSON
    Schema, or an entrypoint that is missing, not executable, outside the folder,
    or that others could change (see `check_entrypoint`).
    """
    path = folder / MANIFEST_FILENAME
    try:
        with path.open("rb") as handle:
            data = handle.read(MANIFEST_MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read {MANIFEST_FILENAME}: {exc.strerror or exc}") from None
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"{MANIFEST_FILENAME} is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ManifestError(_yaml_problem(exc)) from None
    manifest = parse_manifest(document)
    try:
        check_entrypoint(folder, manifest.entrypoint)
    except ManifestError as exc:
        exc.plugin_name = manifest.name
        raise
    return manifest


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return _one_line(f"{MANIFEST_FILENAME} is not valid YAML at {where}: {exc.problem}")
    return _one_line(f"{MANIFEST_FILENAME} is not valid YAML: {exc}")


def parse_manifest(document: object) -> Manifest:
    """Validate a parsed manifest document (no file system access).

    Raises ManifestError naming the first field that is missing or wrong.
    """
    if not isinstance(document, dict):
        raise ManifestError("manifest must be a YAML mapping")
    doc = cast(dict[str, Any], document)
    try:
        return _parse_document(doc)
    except ManifestError as exc:
        name = doc.get("name")
        if isinstance(name, str) and _PLUGIN_NAME.match(name):
            exc.plugin_name = name
        raise


def _parse_document(doc: dict[str, Any]) -> Manifest:

    spec = doc.get("manifest_spec")
    if spec != MANIFEST_SPEC:
        raise ManifestError(_expected("manifest_spec", repr(MANIFEST_SPEC), spec))
    manifest_version = doc.get("manifest_version")
    if not _is_int(manifest_version) or manifest_version != MANIFEST_VERSION:
        raise ManifestError(_expected("manifest_version", str(MANIFEST_VERSION), manifest_version))

    name = doc.get("name")
    if not isinstance(name, str) or not _PLUGIN_NAME.match(name):
        raise ManifestError(
            _expected(
                "name", "1-64 characters from A-Z a-z 0-9 _ . - (not starting with _ . -)", name
            )
        )
    version = _version_text(doc.get("version"))
    protocol = doc.get("protocol")
    if not _is_int(protocol) or protocol != PROTOCOL_VERSION:
        raise ManifestError(_expected("protocol", str(PROTOCOL_VERSION), protocol))
    entrypoint = doc.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ManifestError(
            _expected("entrypoint", "a file name relative to the plugin folder", entrypoint)
        )
    description = _optional_text(doc, "description")
    concurrency_safe = doc.get("concurrency_safe", True)
    if not isinstance(concurrency_safe, bool):
        raise ManifestError(_expected("concurrency_safe", "true or false", concurrency_safe))

    commands = _parse_commands(doc.get("commands"))
    required_config, optional_config = _parse_config_keys(doc.get("config_keys"))

    return Manifest(
        name=name,
        version=version,
        description=description,
        entrypoint=entrypoint,
        concurrency_safe=concurrency_safe,
        commands=commands,
        required_config=required_config,
        optional_config=optional_config,
        raw=MappingProxyType(doc),
    )


def check_entrypoint(folder: Path, entrypoint: str) -> Path:
    """Resolve `entrypoint` inside `folder` and return its absolute, resolved path.

    Raises ManifestError when it is absolute, escapes the folder (also through a
    symlink), is missing, is not a regular file or not executable, or when anyone but
    root and the service's user could change it: the folder, the manifest, the
    entrypoint and any folder between them must pass `trust.ownership_problem`.
    """
    if Path(entrypoint).is_absolute():
        raise ManifestError(f"entrypoint {entrypoint!r} must be relative to the plugin folder")
    root = folder.resolve()
    target = (root / entrypoint).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ManifestError(f"entrypoint {entrypoint!r} escapes the plugin folder")
    try:
        info = target.stat()
    except OSError as exc:
        raise ManifestError(f"entrypoint {entrypoint!r} not found: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(f"entrypoint {entrypoint!r} is not a regular file")
    if not os.access(target, os.X_OK):
        raise ManifestError(f"entrypoint {entrypoint!r} is not executable (chmod +x)")
    between = [parent for parent in target.parents if parent.is_relative_to(root)]
    checks = [(root, "plugin folder"), (root / MANIFEST_FILENAME, "manifest")]
    checks += [(parent, "folder") for parent in reversed(between) if parent != root]
    checks.append((target, "entrypoint"))
    for path, what in checks:
        problem = ownership_problem(path, what)
        if problem is not None:
            raise ManifestError(problem)
    return target


def _parse_commands(value: object) -> tuple[Command, ...]:
    if not isinstance(value, list) or not value:
        raise ManifestError("commands must be a non-empty list of {name, type, ...} objects")
    commands: list[Command] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        command = _parse_command(index, item)
        if command.name in seen:
            raise ManifestError(f"commands[{index}]: duplicate command name {command.name!r}")
        seen.add(command.name)
        commands.append(command)
    return tuple(commands)


_COMMAND_KEYS = frozenset(
    {
        "name",
        "type",
        "description",
        "input_schema",
        "output_schema",
        "idempotent",
        "retry_safe",
        "values",
    }
)


def _parse_command(index: int, item: object) -> Command:
    where = f"commands[{index}]"
    if not isinstance(item, dict):
        raise ManifestError(f"{where} must be an object with name and type")
    raw = cast(dict[str, Any], item)
    name = raw.get("name")
    if not isinstance(name, str) or not _COMMAND_NAME.match(name):
        raise ManifestError(
            _expected(f"{where}.name", "a letter, then letters, digits, _ or - (max 64)", name)
        )
    where = f"command {name!r}"
    kind = raw.get("type")
    if kind not in COMMAND_TYPES:
        raise ManifestError(_expected(f"{where}: type", "read or write", kind))
    description = _optional_text(raw, "description", where)
    flags: dict[str, bool | None] = {}
    for flag in ("idempotent", "retry_safe"):
        flag_value = raw.get(flag)
        if flag_value is not None and not isinstance(flag_value, bool):
            raise ManifestError(_expected(f"{where}: {flag}", "true or false", flag_value))
        flags[flag] = flag_value
    schema, validator = _compile_input_schema(where, raw.get("input_schema"))
    return Command(
        name=name,
        type=cast(CommandType, kind),
        description=description,
        input_schema=schema,
        output_schema=raw.get("output_schema"),
        idempotent=flags["idempotent"],
        retry_safe=flags["retry_safe"],
        values=raw.get("values"),
        extra=MappingProxyType({k: v for k, v in raw.items() if k not in _COMMAND_KEYS}),
        _validator=validator,
    )


def _compile_input_schema(
    where: str, schema: object
) -> tuple[Mapping[str, Any] | None, Validator | None]:
    if schema is None:
        return None, None
    if isinstance(schema, bool):
        # `true`/`false` are valid JSON Schemas, but useless here; refuse to guess.
        raise ManifestError(f"{where}: input_schema must be an object, not a boolean")
    if not isinstance(schema, dict):
        raise ManifestError(f"{where}: input_schema must be an object (a JSON Schema)")
    effective = _expand_compact(cast(dict[str, Any], schema))
    for ref in _refs(effective):
        if not ref.startswith("#"):
            raise ManifestError(
                f"{where}: input_schema $ref {ref!r} is not local; only '#...' references "
                "are supported"
            )
    dialect = effective.get("$schema")
    if dialect is not None:
        # jsonschema only warns about an unknown $schema and then guesses; refuse instead.
        try:
            if not isinstance(dialect, str):
                raise UnknownDialect(dialect)
            specification_with(dialect)
        except UnknownDialect:
            raise ManifestError(
                _one_line(f"{where}: input_schema has an unknown $schema {dialect!r}")
            ) from None
    cls = validator_for(effective, default=Draft202012Validator)
    try:
        cls.check_schema(effective)
    except SchemaError as exc:
        # The error describes the first failing keyword; its JSON path points into
        # the schema document, which is what a plugin author needs to fix.
        raise ManifestError(
            _one_line(
                f"{where}: input_schema is not a valid JSON Schema: {exc.message} "
                f"(at {exc.json_path})"
            )
        ) from None
    format_checker: FormatChecker = cls.FORMAT_CHECKER
    return MappingProxyType(effective), cls(effective, format_checker=format_checker)


def _expand_compact(schema: dict[str, Any]) -> dict[str, Any]:
    """Expand ductile's compact `{prop: type}` form; return real schemas unchanged.

    Compact means: not empty, no structural keyword, and every value is a JSON type
    name or a property schema (a map).
    """
    if not schema or any(key in _STRUCTURAL_KEYWORDS for key in schema):
        return schema
    if not all(isinstance(v, dict) or v in _JSON_TYPES for v in schema.values()):
        return schema
    properties = {k: ({"type": v} if isinstance(v, str) else v) for k, v in schema.items()}
    return {"type": "object", "properties": properties}


def _refs(node: object) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if key == "$ref" and isinstance(value, str):
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(current, list):
            stack.extend(current)
    return found


def _parse_config_keys(value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if value is None:
        return (), ()
    if not isinstance(value, dict):
        raise ManifestError("config_keys must be an object with required and optional lists")
    keys = cast(dict[str, Any], value)
    result: list[tuple[str, ...]] = []
    for part in ("required", "optional"):
        names = keys.get(part)
        if names is None:
            result.append(())
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ManifestError(f"config_keys.{part} must be a list of key names")
        result.append(tuple(cast(list[str], names)))
    return result[0], result[1]


def _version_text(value: object) -> str:
    # YAML reads `version: 1.0` as a float; accept it as text, like ductile does.
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ManifestError(_expected("version", "a version string such as 1.0.0", value))


def _optional_text(doc: Mapping[str, Any], key: str, where: str = "") -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        label = f"{where}: {key}" if where else key
        raise ManifestError(_expected(label, "text", value))
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected(field_name: str, expected: str, got: object) -> str:
    if got is None:
        return f"{field_name} is required ({expected})"
    return _one_line(f"{field_name} must be {expected}, got {_shorten(repr(got), 80)}")


def _one_line(text: str) -> str:
    return _shorten(" ".join(text.split()))


def _shorten(text: str, cap: int = _MESSAGE_CAP) -> str:
    return text if len(text) <= cap else text[: cap - 1] + "…"
