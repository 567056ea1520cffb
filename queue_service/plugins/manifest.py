"""Plugin manifests (ductile plugin protocol 2): parse and validate one `manifest.yaml`.

A manifest is validated by a pydantic model, and every problem is reported at once
in a one-line `ManifestError`, each naming its field. Unknown keys are ignored for
behaviour but kept in `Manifest.raw` (and `Command.extra`), so echoing a manifest
loses nothing.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, cast

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
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
_ALL_PROBLEMS_CAP = 4000

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

    Raises ManifestError listing every missing or wrong field at once, in one line:
    `protocol must be 2, got 1; command 'poll': type is required (read or write)`.
    """
    if not isinstance(document, dict):
        raise ManifestError("manifest must be a YAML mapping")
    doc = cast(dict[str, Any], document)
    name = doc.get("name")
    readable_name = name if isinstance(name, str) and _PLUGIN_NAME.match(name) else None
    try:
        model = _ManifestModel.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(_one_line(_describe(error, doc)) for error in exc.errors())
        raise ManifestError(_shorten(problems, _ALL_PROBLEMS_CAP), readable_name) from None
    config_keys = model.config_keys or _ConfigKeysModel()
    return Manifest(
        name=model.name,
        version=model.version,
        description=model.description or "",
        entrypoint=model.entrypoint,
        concurrency_safe=model.concurrency_safe,
        commands=tuple(command.build() for command in model.commands),
        required_config=config_keys.required or (),
        optional_config=config_keys.optional or (),
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


# -- the pydantic models: each field states what it expects, once ---------------------


def _rule(expected: str, convert: Callable[[Any], Any], *, optional: bool = False) -> Any:
    """A validator. `convert` returns the value or raises ValueError. None (or a missing
    key) is `is required (EXPECTED)` unless `optional`; a bad value is
    `must be EXPECTED, got VALUE`."""

    def validate(value: Any) -> Any:
        if value is None:
            if optional:
                return None
            raise PydanticCustomError("missing", "is required ({expected})", {"expected": expected})
        try:
            return convert(value)
        except ValueError:
            raise PydanticCustomError(
                "invalid",
                "must be {expected}, got {got}",
                {"expected": expected, "got": _shorten(repr(value), 80)},
            ) from None

    return PlainValidator(validate)


def _when(test: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """A `convert` for `_rule` that keeps the value when `test` holds."""

    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError
        return value

    return check


def _version_text(value: object) -> str:
    # YAML reads `version: 1.0` as a float; accept it as text, like ductile does.
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise ValueError
    return tuple(cast(list[str], value))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and bool(pattern.match(v))


def _an_object(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise PydanticCustomError("not_an_object", "must be {what}", {"what": what})
        return value

    return check


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


_Text = Annotated[str | None, _rule("text", _when(lambda v: isinstance(v, str)), optional=True)]
_Flag = Annotated[bool | None, _rule("true or false", _when(_is_bool), optional=True)]
_Names = Annotated[tuple[str, ...] | None, _rule("a list of key names", _names, optional=True)]


class _Model(BaseModel):
    # Unknown keys are kept (real plugins carry e.g. fact_outputs). Defaults are
    # validated too, so a missing required key reads like a null one: `is required`.
    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)


class _CommandModel(_Model):
    name: Annotated[
        str,
        _rule("a letter, then letters, digits, _ or - (max 64)", _when(_matches(_COMMAND_NAME))),
    ] = cast(str, None)
    type: Annotated[CommandType, _rule("read or write", _when(lambda v: v in COMMAND_TYPES))] = (
        cast(CommandType, None)
    )
    description: _Text = None
    input_schema: Annotated[Mapping[str, Any] | None, PlainValidator(_input_schema)] = None
    output_schema: Any = None
    idempotent: _Flag = None
    retry_safe: _Flag = None
    values: Any = None

    _object = model_validator(mode="before")(_an_object("an object with name and type"))

    def build(self) -> Command:
        validator = None
        if self.input_schema is not None:
            cls = validator_for(self.input_schema, default=Draft202012Validator)
            format_checker: FormatChecker = cls.FORMAT_CHECKER
            validator = cls(self.input_schema, format_checker=format_checker)
        return Command(
            name=self.name,
            type=self.type,
            description=self.description or "",
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            idempotent=self.idempotent,
            retry_safe=self.retry_safe,
            values=self.values,
            extra=MappingProxyType(dict(self.model_extra or {})),
            _validator=validator,
        )


class _ConfigKeysModel(_Model):
    required: _Names = None
    optional: _Names = None

    _object = model_validator(mode="before")(
        _an_object("an object with required and optional lists")
    )


def _command_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise PydanticCustomError(
            "invalid",
            "must be {expected}",
            {"expected": "a non-empty list of {name, type, ...} objects"},
        )
    return value


class _ManifestModel(_Model):
    manifest_spec: Annotated[
        str, _rule(repr(MANIFEST_SPEC), _when(lambda v: v == MANIFEST_SPEC))
    ] = cast(str, None)
    manifest_version: Annotated[
        int, _rule(str(MANIFEST_VERSION), _when(lambda v: _is_int(v) and v == MANIFEST_VERSION))
    ] = cast(int, None)
    name: Annotated[
        str,
        _rule(
            "1-64 characters from A-Z a-z 0-9 _ . - (not starting with _ . -)",
            _when(_matches(_PLUGIN_NAME)),
        ),
    ] = cast(str, None)
    version: Annotated[str, _rule("a version string such as 1.0.0", _version_text)] = cast(
        str, None
    )
    protocol: Annotated[
        int, _rule(str(PROTOCOL_VERSION), _when(lambda v: _is_int(v) and v == PROTOCOL_VERSION))
    ] = cast(int, None)
    entrypoint: Annotated[
        str,
        _rule(
            "a file name relative to the plugin folder",
            _when(lambda v: isinstance(v, str) and bool(v.strip())),
        ),
    ] = cast(str, None)
    description: _Text = None
    concurrency_safe: Annotated[bool, _rule("true or false", _when(_is_bool))] = True
    commands: Annotated[list[_CommandModel], BeforeValidator(_command_list)] = cast(
        list[_CommandModel], None
    )
    config_keys: _ConfigKeysModel | None = None

    @field_validator("commands")
    @classmethod
    def _unique_names(cls, commands: list[_CommandModel]) -> list[_CommandModel]:
        seen: set[str] = set()
        for index, command in enumerate(commands):
            if command.name in seen:
                raise PydanticCustomError(
                    "duplicate",
                    "duplicate command name {name}",
                    {"name": repr(command.name), "at": f"commands[{index}]"},
                )
            seen.add(command.name)
        return commands


def _describe(error: ErrorDetails, doc: Mapping[str, Any]) -> str:
    """One problem: the field, named as a plugin author wrote it, then what is wrong."""
    ctx = error.get("ctx") or {}
    if "at" in ctx:
        return f"{ctx['at']}: {error['msg']}"
    return f"{_label(error['loc'], doc)} {error['msg']}"


def _label(loc: tuple[int | str, ...], doc: Mapping[str, Any]) -> str:
    """`name`, `config_keys.required`, `commands[0]`, and `command 'poll': type` once
    the command's name can be read (else `commands[0].type`)."""
    if len(loc) >= 3 and loc[0] == "commands" and isinstance(loc[1], int):
        command = doc["commands"][loc[1]]
        name = command.get("name") if isinstance(command, dict) else None
        if isinstance(name, str) and _COMMAND_NAME.match(name):
            return f"command {name!r}: " + ".".join(str(part) for part in loc[2:])
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _input_schema(schema: object) -> Mapping[str, Any] | None:
    """The effective input_schema (compact form expanded), checked to be a valid JSON
    Schema of a known dialect with local `$ref`s only."""
    if schema is None:
        return None
    if isinstance(schema, bool):
        # `true`/`false` are valid JSON Schemas, but useless here; refuse to guess.
        raise _schema_problem("must be an object, not a boolean")
    if not isinstance(schema, dict):
        raise _schema_problem("must be an object (a JSON Schema)")
    effective = _expand_compact(cast(dict[str, Any], schema))
    for ref in _refs(effective):
        if not ref.startswith("#"):
            raise _schema_problem(
                f"$ref {ref!r} is not local; only '#...' references are supported"
            )
    dialect = effective.get("$schema")
    if dialect is not None:
        # jsonschema only warns about an unknown $schema and then guesses; refuse instead.
        try:
            if not isinstance(dialect, str):
                raise UnknownDialect(dialect)
            specification_with(dialect)
        except UnknownDialect:
            raise _schema_problem(f"has an unknown $schema {dialect!r}") from None
    cls = validator_for(effective, default=Draft202012Validator)
    try:
        cls.check_schema(effective)
    except SchemaError as exc:
        # The error describes the first failing keyword; its JSON path points into
        # the schema document, which is what a plugin author needs to fix.
        raise _schema_problem(
            f"is not a valid JSON Schema: {exc.message} (at {exc.json_path})"
        ) from None
    return MappingProxyType(effective)


def _schema_problem(message: str) -> PydanticCustomError:
    # Passed as data, not as the template: a schema's text may hold braces.
    return PydanticCustomError("input_schema", "{message}", {"message": _one_line(message)})


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


def _one_line(text: str) -> str:
    return _shorten(" ".join(text.split()))


def _shorten(text: str, cap: int = _MESSAGE_CAP) -> str:
    return text if len(text) <= cap else text[: cap - 1] + "…"
