"""Schemathesis against our own /openapi.json, on a real `queue-service serve` process.

Every operation, a valid `*` token, positive and negative data, and every check schemathesis
enables by default (not_a_server_error, status_code_conformance, content_type_conformance,
response_headers_conformance, response_schema_conformance, positive_data_acceptance,
negative_data_rejection, missing_required_header, unsupported_method,
allow_header_conformance, use_after_free, ensure_resource_availability, ignored_auth,
object_level_authorization): nothing is disabled or loosened. The bar is zero failures.

The database is seeded with jobs in every status, and generated job ids are swapped for
real ones part of the time, so GET /job/{job_id} and POST /job/{job_id}/cancel reach real
jobs, not only 404s. Every test runs against a server on each backend: an SQLite file, and a
schema of the PostgreSQL test server (skipped without one; see tests/conftest.py).

Budget: QS_FUZZ_EXAMPLES (default 25) examples per operation in the fuzzing phase, plus the
deterministic examples and coverage phases and a stateful run. Heavier:
    QS_FUZZ_EXAMPLES=500 QS_FUZZ_SEED=123 pytest tests/test_fuzz_openapi.py
Without QS_FUZZ_SEED the seed is fixed, so CI runs are reproducible.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from queue_service.api.app import CORE_OPERATIONS
from queue_service.api.openapi import build_openapi
from queue_service.api.params import MAX_TEXT, QueryParam, exact_pattern
from queue_service.auth import new_secret
from queue_service.models import TIMESTAMP_PATTERN
from queue_service.plugins import load
from queue_service.statuses import Status
from tests.conftest import STORE_BACKENDS
from tests.live_server import PLUGIN_DIR, LiveServer, live_database, start_server

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("QS_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("QS_FUZZ_SEED", "20261123"))
#: Every check schemathesis has; each is enabled by default, and this test asserts it stays so.
ALL_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    "object_level_authorization",
)


#: Seeded job ids by operation id, filled by the `live` fixture before any case is drawn.
_REAL_IDS: dict[str, list[str]] = {}
#: The sample plugin's commands (poll and health are read commands, handle a write one).
ECHO_COMMANDS = ("poll", "handle", "health")
#: The live server's `*` token. Made before the server: schemathesis builds the coverage
#: phase's cases, credentials included, when pytest collects the tests.
_TOKEN = new_secret()


#: The live server's plugins: the document has an operation per command of theirs.
REGISTRY = load([PLUGIN_DIR])


def _load_schema() -> Any:
    """The document the server serves (the `live` fixture asserts so, but for its `servers`
    URL, which names the server's port), built from the same operation registry and plugins,
    loaded eagerly: schemathesis's fixture-based lazy loader does not support pytest 9.2's
    node ids, while the eager one does."""
    config = schemathesis.Config(seed=SEED)
    config.projects.override.generation.update(
        max_examples=EXAMPLES, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    )
    document = build_openapi(CORE_OPERATIONS, REGISTRY)
    loaded = schemathesis.openapi.from_dict(document, config=config)

    @loaded.hook
    def flatmap_path_parameters(
        context: schemathesis.HookContext, path_parameters: dict[str, Any]
    ) -> st.SearchStrategy[dict[str, Any]]:
        """Part of the time, swap generated path parameters for real ones: a seeded job's
        id, or the echo plugin's commands. Only values the schema accepts are swapped (for
        others it accepts), so a negative case stays negative."""
        operation = context.operation
        if operation is None or not isinstance(path_parameters, dict) or not path_parameters:
            return st.just(path_parameters)
        if not all(
            isinstance(v, str) and 1 <= len(v) <= MAX_TEXT for v in path_parameters.values()
        ):
            return st.just(path_parameters)
        if set(path_parameters) == {"plugin", "command"}:
            real = st.sampled_from(ECHO_COMMANDS).map(lambda c: {"plugin": "echo", "command": c})
        else:
            ids = _REAL_IDS.get(operation.definition.raw["operationId"])
            if not ids:
                return st.just(path_parameters)
            real = st.sampled_from(ids).map(lambda i: {"job_id": i})
        return st.one_of(st.just(path_parameters), real)

    @loaded.auth()
    class Bearer:
        """The `*` token of the live server. An auth provider rather than a fixed header,
        so negative cases that drop the credential on purpose are sent without it."""

        def get(self, case: schemathesis.Case[Any], ctx: schemathesis.AuthContext) -> str:
            return _TOKEN

        def set(
            self, case: schemathesis.Case[Any], data: str, ctx: schemathesis.AuthContext
        ) -> None:
            case.headers["Authorization"] = f"Bearer {data}"

    return loaded


schema = _load_schema()


@pytest.fixture(scope="module", params=sorted(STORE_BACKENDS))
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with live_database(request) as db:
        yield from _live(tmp_path_factory, db)


def _live(tmp_path_factory: pytest.TempPathFactory, db: str | None) -> Iterator[LiveServer]:
    # run_after may be any time the schema admits: the document cannot state a bound that
    # moves with the clock (max_run_after_days, in words in its description), so the fuzzed
    # server lifts it past year 9999. tests/test_api_plugins.py covers the bound itself.
    server = start_server(
        tmp_path_factory.mktemp("fuzz"),
        db=db,
        preset_tokens={"*": _TOKEN},
        service_settings="max_run_after_days = 4000000",
    )
    served = httpx.get(f"{server.base}/openapi.json").json()
    assert served["servers"][0]["url"] == server.base
    # Built afresh: schemathesis adds the links it infers to the loaded document in place,
    # so after one server's stateful run `schema.raw_schema` is no longer what was loaded.
    built = build_openapi(CORE_OPERATIONS, REGISTRY)
    assert {**served, "servers": built["servers"]} == built, (
        "the fuzzed document must be the served one"
    )
    jobs = server.seeded.jobs
    _REAL_IDS["get_job"] = server.seeded.all_job_ids
    # Not the running job: nothing holds it, so a cancel would wait out its 10 s budget.
    _REAL_IDS["cancel_job"] = [i for key, ids in jobs.items() if key != Status.RUNNING for i in ids]
    fuzzed = _FUZZED.setdefault(server.base, set())
    try:
        yield server
    finally:
        _REAL_IDS.clear()
        log = server.stop()
        _FUZZED.pop(server.base, None)
    # Whatever the fuzzer sent, the server never logged an unhandled error ...
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]
    # ... and what was fuzzed against this server (all of it in one process; the pytest-xdist
    # scheduler may give a server of this module only part of the operations) did its work:
    # ignored_auth's probes (no token, a bad token) really were refused, the fuzzer reached
    # real jobs and really enqueued.
    if fuzzed:
        assert '" 401' in log
    if ("GET", "/job/{job_id}") in fuzzed:
        assert re.search(r'"GET /job/[^ ]+ HTTP/1.1" 200', log), "no GET /job/{id} found a job"
    if any(method == "POST" and path.startswith("/plugin/") for method, path in fuzzed):
        assert '"POST /plugin/echo/' in log and 'HTTP/1.1" 202' in log, "nothing was enqueued"


#: The operations (method, path template) fuzzed against each live server, by its base URL.
_FUZZED: dict[str, set[tuple[str, str]]] = {}


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(
    database=None,
    deadline=None,
    # Generated 1-200 character ids and payloads are large by design.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_every_operation_conforms(case: schemathesis.Case[Any], live: LiveServer) -> None:
    _FUZZED[live.base].add((case.method.upper(), case.operation.path))
    case.call_and_validate(base_url=live.base, timeout=30)


def test_stateful_links_conform(live: LiveServer) -> None:
    """The stateful phase: enqueue, then follow the inferred links (get, cancel) with the
    ids the server returned."""
    machine = schema.as_state_machine()

    class Machine(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"base_url": live.base, "timeout": 30}

    Machine.run(
        settings=settings(
            max_examples=max(5, EXAMPLES // 2),
            stateful_step_count=6,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


def test_no_check_is_disabled_and_every_operation_is_fuzzed(live: LiveServer) -> None:
    checks = schema.config.checks_config_for(operation=None, phase=None)
    for name in ALL_CHECKS:
        assert getattr(checks, name).enabled, name
    assert schema.config.generation_for(operation=None).modes == [
        GenerationMode.POSITIVE,
        GenerationMode.NEGATIVE,
    ]
    fuzzed = {(r.ok().method.upper(), r.ok().path) for r in schema.get_all_operations()}
    served = httpx.get(f"{live.base}/openapi.json").json()
    assert fuzzed == {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}


# -- the document says exactly what the server accepts (regressions found by fuzzing) ----------


PATTERNED = [
    pytest.param(spec, id=f"{op.path} {spec.name}")
    for op in CORE_OPERATIONS
    for spec in op.query
    if exact_pattern(spec.schema) and "format" not in spec.schema
]


def _schema_admits(schema: dict[str, Any], value: str) -> bool:
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9):
        return False
    # ECMA-262 `$` never matches before a trailing newline; fullmatch is the same test.
    return re.fullmatch(str(exact_pattern(schema)), value) is not None


def _server_admits(spec: QueryParam, value: str) -> bool:
    try:
        spec.parse(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("spec", PATTERNED)
@settings(max_examples=150, database=None, deadline=None)
@given(data=st.data())
def test_every_patterned_parameter_accepts_exactly_its_pattern(
    spec: QueryParam, data: st.DataObject
) -> None:
    """Python's `re` and JSON Schema's regexes differ (`$` before a newline, `\\d` and case
    folding of non-ASCII letters); the server must agree with the document, not with `re`."""
    valid = data.draw(st.from_regex(str(exact_pattern(spec.schema)), fullmatch=True))
    for value in (
        valid,
        valid + "\n",
        valid.upper(),
        valid.replace("k", "\u212a"),
        valid.replace(" ", "\t"),
        valid.replace("0", "\uff10"),
        " " + valid,
    ):
        assert _schema_admits(spec.schema, value) == _server_admits(spec, value), repr(value)


def test_the_enqueue_body_is_documented_as_the_server_reads_it() -> None:
    document = build_openapi(CORE_OPERATIONS)
    body = document["paths"]["/plugin/{plugin}/{command}"]["post"]["requestBody"]
    # An empty body means {}: the body is optional. Both JSON media types are listed.
    assert body["required"] is False
    assert set(body["content"]) == {"application/json", "application/merge-patch+json"}
    model = document["components"]["schemas"]["EnqueueRequest"]
    assert model["additionalProperties"] is False and not model.get("required")
    run_after = next(b for b in model["properties"]["run_after"]["anyOf"] if b.get("type"))
    assert run_after["format"] == "date-time" and run_after["pattern"]
    attempts = next(b for b in model["properties"]["max_attempts"]["anyOf"] if b.get("type"))
    assert attempts == {"type": "integer", "minimum": 1, "maximum": 100}


def test_time_parameters_pair_the_format_with_the_pattern() -> None:
    document = build_openapi(CORE_OPERATIONS)
    for parameter in document["paths"]["/jobs"]["get"]["parameters"]:
        if parameter["name"].startswith("created_"):
            assert parameter["schema"]["format"] == "date-time"
            assert parameter["schema"]["pattern"] == TIMESTAMP_PATTERN


def _plausible_times() -> st.SearchStrategy[str]:
    """RFC 3339-shaped text near every edge: years 0 and 9999, Feb 29, 23:59:60 with any
    offset, offsets up to ±24:60, any number of fraction digits, t and z in lower case."""
    two = st.integers(0, 61).map("{:02d}".format)
    return st.builds(
        "{}-{}-{}{}{}:{}:{}{}{}".format,
        st.sampled_from(["0000", "0001", "1900", "1999", "2000", "2024", "2100", "9999"]),
        st.integers(0, 13).map("{:02d}".format),
        st.integers(0, 32).map("{:02d}".format),
        st.sampled_from(["T", "t", " "]),
        st.integers(0, 25).map("{:02d}".format),
        two,
        st.sampled_from(["00", "59", "60", "61"]),
        st.sampled_from(["", ".5", ".123456", ".123456789", ".1234567891", "."]),
        st.sampled_from(["Z", "z", "+00:00", "-00:00", "+01:00", "-01:00", "+23:59", "-23:59"])
        | st.builds("{}{}:{}".format, st.sampled_from("+-"), two, two),
    )


@settings(max_examples=1000, database=None, deadline=None)
@given(text=_plausible_times() | st.from_regex(TIMESTAMP_PATTERN, fullmatch=True))
def test_time_parsing_agrees_with_the_documented_schema(text: str) -> None:
    """The judge is the validator schemathesis itself uses (jsonschema-rs, formats on):
    before, leap seconds and year 0 were refused, a space was accepted, and instants past
    year 9999 or before year 1 in UTC were a 500."""
    import jsonschema_rs

    from queue_service.api.params import parse_timestamp
    from queue_service.models import TIMESTAMP_SCHEMA

    judge = jsonschema_rs.validator_for(TIMESTAMP_SCHEMA, validate_formats=True)
    try:
        stored = parse_timestamp(text)
    except ValueError:
        accepted = False
    else:
        accepted = True
        assert re.fullmatch(
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", stored
        )
    assert accepted == judge.is_valid(text), text
