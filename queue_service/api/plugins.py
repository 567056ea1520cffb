"""Plugin routes: GET /plugins, POST /plugin/{plugin}/{command}, POST /job/{id}/cancel,
GET /schedules."""

from __future__ import annotations

import asyncio
import json
import math
import re
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from queue_service import models
from queue_service.api import examples
from queue_service.api.operations import ANY_SCOPE, Context, Operation, insufficient_scope
from queue_service.api.params import (
    MAX_ECHO,
    IntegerTooLong,
    parse_json_integer,
    parse_timestamp,
)
from queue_service.api.responses import (
    could_be_a_job_id,
    job_not_found,
    job_response,
    json_response,
)
from queue_service.errors import ApiError
from queue_service.overview import schedule_infos
from queue_service.plugins import PluginLookupError, PluginUnavailable, UnknownCommand
from queue_service.scopes import grants
from queue_service.statuses import TERMINAL, Status
from queue_service.store import Conflict, JobNotFound, NewJob
from queue_service.timeutil import format_ts, now_ts, utcnow

#: How long POST /job/{id}/cancel waits for a running job's subprocess to stop.
CANCEL_WAIT_SECONDS = 10.0
#: The media types a JSON body may be sent as (the OpenAPI document lists each).
JSON_TYPES = ("application/json", "application/merge-patch+json")


async def list_plugins(request: Request, ctx: Context) -> Response:
    plugins = [
        {
            "name": p.name,
            "version": p.version,
            "description": p.description,
            "valid": p.valid,
            "error": p.error,
            "concurrency_safe": p.concurrency_safe,
            "commands": [
                {
                    "name": c.name,
                    "type": str(c.type),
                    "description": c.description,
                    "input_schema": dict(c.input_schema) if c.input_schema is not None else None,
                }
                for c in p.commands
            ],
        }
        for p in ctx.state.registry.all()
    ]
    missing = [
        {"name": name, "queued_jobs": n}
        for name, n in sorted((await ctx.state.registry.missing(ctx.state.store)).items())
    ]
    return json_response({"plugins": plugins, "missing": missing})


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


#: A \uD800-\uDFFF escape: the only way a lone surrogate can reach a parsed string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: A JSON string literal (escapes included), to drop before counting brackets.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")


def _nests_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether the JSON text nests containers more than `limit` deep, at C speed.

    Strings are dropped and only brackets kept (objects written as arrays: depth does not
    care which). Each bytes.replace pass then removes every innermost `[]`, i.e. exactly one
    level, so `limit` passes empty any text of depth <= limit. (Walking a parsed 1 MiB body
    in Python took 0.3 s.)
    """
    brackets = _JSON_STRING.sub(b"", raw).translate(_OBJECTS_AS_ARRAYS, _NOT_BRACKETS)
    too_deep = b"[" * (limit + 1)
    for _ in range(limit):
        if not brackets:
            return False
        if too_deep in brackets:  # limit + 1 openers in a row: no need to peel further
            return True
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            return False  # unbalanced, so not JSON at all: let the parser say where
        brackets = peeled
    return bool(brackets)


def _has_lone_surrogate(document: Any) -> bool:
    """Whether any string (or key) is not valid Unicode. Such text would be stored and then
    break every read of the job."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def read_json_body(request: Request) -> Any:
    """The request body as JSON; an empty body is `{}`. Errors are canonical 400/415s.

    Strict JSON: NaN and Infinity, numbers beyond the float range, lone surrogates and
    nesting deeper than MAX_JSON_DEPTH are refused.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in JSON_TYPES:
        raise ApiError(
            "unsupported_media_type",
            f"the body must be application/json, not {content_type[:80]!r} "
            "(with curl, add -H 'Content-Type: application/json')",
            allowed=list(JSON_TYPES),
        )
    raw = await request.body()
    if not raw.strip():
        return {}
    if len(raw) > _INLINE_JSON_BYTES:
        # Decoding a large body takes milliseconds; keep the event loop serving meanwhile.
        return await asyncio.to_thread(decode_json, raw)
    return decode_json(raw)


#: Bodies up to this size are decoded on the event loop; larger ones in a thread.
_INLINE_JSON_BYTES = 64 * 1024


def decode_json(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes, or the canonical 400 saying what is wrong."""
    if _nests_deeper_than(raw, models.MAX_JSON_DEPTH):
        raise ApiError("invalid_body", f"the body nests deeper than {models.MAX_JSON_DEPTH} levels")
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess UTF-16 or -32.
        document = json.loads(
            raw.decode("utf-8"),
            parse_float=_finite_float,
            parse_int=parse_json_integer,
            parse_constant=_no_constant,
        )
    except IntegerTooLong as exc:
        raise ApiError("invalid_body", f"the body is refused: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid_body", f"the body is not valid JSON: {str(exc)[:200]}") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(document):
        raise ApiError(
            "invalid_body",
            "the body is not valid Unicode: a string holds a lone UTF-16 surrogate "
            "(\\ud800-\\udfff)",
        )
    return document


def parse_enqueue(body: Any) -> models.EnqueueRequest:
    if not isinstance(body, dict):
        raise ApiError("invalid_body", 'the body must be a JSON object like {"payload": {...}}')
    attempts = body.get("max_attempts")
    if isinstance(attempts, float) and attempts.is_integer():
        # JSON Schema counts 3.0 as the integer 3; strict validation would not.
        body = {**body, "max_attempts": int(attempts)}
    try:
        request = models.EnqueueRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError("invalid_body", f"{where}: {first['msg']}", param=where[:MAX_ECHO]) from None
    if request.run_after is not None:
        try:
            request.run_after = parse_timestamp(request.run_after)
        except ValueError as exc:
            raise ApiError("invalid_body", f"run_after: {exc}", param="run_after") from None
    return request


def check_run_after(run_after: str | None, max_days: int) -> None:
    """A job may wait at most `max_days` (service.max_run_after_days): a key or a slot is
    never held for years by a job that will not run."""
    if run_after is None:
        return
    try:
        latest = format_ts(utcnow() + timedelta(days=max_days))
    except OverflowError:  # a limit past year 9999: no time the store holds is beyond it
        return
    if run_after > latest:
        raise ApiError(
            "invalid_body",
            f"run_after: at most {max_days} days ahead (until {latest}); "
            "the limit is service.max_run_after_days",
            param="run_after",
        )


async def enqueue(request: Request, ctx: Context) -> Response:
    plugin_name = request.path_params["plugin"]
    command_name = request.path_params["command"]
    try:
        plugin, command = ctx.state.registry.resolve(plugin_name, command_name)
    except PluginLookupError as exc:
        code = "conflict" if isinstance(exc, PluginUnavailable) else "not_found"
        param = "command" if isinstance(exc, UnknownCommand) else "plugin"
        raise ApiError(code, str(exc), param=param, allowed=list(exc.allowed)) from None
    assert ctx.principal is not None
    needed = "plugin:rw" if str(command.type) == "write" else "plugin:ro"
    if not grants(ctx.principal.scopes, needed):
        ctx.state.tokens.record_failure("insufficient_scope")
        raise insufficient_scope(needed, f"command {command_name!r} is a {command.type} command")
    body = parse_enqueue(await read_json_body(request))
    check_run_after(body.run_after, ctx.state.config.service.max_run_after_days)
    problem = command.validate_payload(body.payload)
    if problem is not None:
        raise ApiError(
            "validation_failed",
            f"payload does not match the input_schema of {plugin.name}.{command.name} "
            f"at {problem.path}: {problem.message}",
            param=f"payload{problem.path[1:]}" if problem.path != "$" else "payload",
        )
    settings = ctx.state.config.plugin(plugin.name)
    result = await ctx.state.store.enqueue(
        NewJob(
            plugin=plugin.name,
            command=command.name,
            payload=body.payload,
            max_attempts=body.max_attempts or settings.max_attempts,
            submitted_by=ctx.principal.name,
            submitted_by_token=ctx.principal.token_id,
            dedupe_key=body.dedupe_key,
            run_after=body.run_after,
        )
    )
    if ctx.state.worker is not None and (body.run_after is None or body.run_after <= now_ts()):
        # A job due later is found by the worker's timer; waking it now would only cost
        # a claim that finds nothing.
        ctx.state.worker.wake()
    status = Status.QUEUED
    if result.deduplicated:
        existing = await ctx.state.store.get_job(result.job_id)
        status = existing.status if existing else Status.QUEUED
    answer = {
        "job_id": result.job_id,
        "status": status,
        "plugin": plugin.name,
        "command": command.name,
        "deduplicated": result.deduplicated,
    }
    return json_response(answer, 200 if result.deduplicated else 202)


async def cancel(request: Request, ctx: Context) -> Response:
    job_id = request.path_params["job_id"]
    try:
        if not could_be_a_job_id(job_id):
            raise JobNotFound(job_id[:MAX_ECHO])
        outcome = await ctx.state.store.cancel_job(job_id)
    except JobNotFound:
        raise job_not_found(job_id) from None
    except Conflict as exc:
        raise ApiError("conflict", str(exc)) from None
    if outcome is Status.RUNNING:
        # The holder's heartbeat sees the flag; a job this process runs stops at once.
        if ctx.state.worker is not None:
            ctx.state.worker.cancel_running(job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_SECONDS
        while loop.time() < deadline:
            job = await ctx.state.store.get_job(job_id)
            if job is None or job.status in TERMINAL:
                break
            await asyncio.sleep(0.05)
    job = await ctx.state.store.get_job(job_id)
    if job is None:  # pruned in between: vanishingly rare
        raise job_not_found(job_id)
    return await job_response(ctx, job, 200 if job.status in TERMINAL else 202)


async def list_schedules(request: Request, ctx: Context) -> Response:
    return json_response({"schedules": await schedule_infos(ctx.state.store, ctx.state.config)})


OPERATIONS = (
    Operation(
        method="GET",
        path="/plugins",
        operation_id="list_plugins",
        summary="Installed plugins and their commands",
        description="Every discovered plugin, valid or not; an invalid one carries its error.",
        handler=list_plugins,
        scope=ANY_SCOPE,
        responses={200: (models.PluginList, "The plugins.")},
        examples={200: examples.PLUGIN_LIST},
        tags=("plugins",),
    ),
    Operation(
        method="POST",
        path="/plugin/{plugin}/{command}",
        operation_id="enqueue_job",
        summary="Enqueue a plugin command (ductile-compatible)",
        description=(
            "The payload is checked against the command's input_schema (GET /plugins, or "
            "the command's own operation in this document). Answers 202 with the new job, "
            "or 200 with the existing one when an active job of this token has the same "
            "dedupe_key. The token may then poll GET /job/{job_id} whatever its scopes."
        ),
        handler=enqueue,
        scope="plugin:ro",
        scope_text=(
            "Needs scope `plugin:rw` (or `plugin:ro` for commands of type read), or a scope "
            "that includes it."
        ),
        responses={
            202: (models.EnqueueResponse, "Queued."),
            200: (models.EnqueueResponse, "Deduplicated: an active job has this dedupe_key."),
            404: (models.ErrorBody, "Unknown plugin or command."),
            409: (models.ErrorBody, "The plugin is installed but invalid."),
        },
        examples={
            202: examples.enqueued("echo", "poll"),
            200: examples.enqueued("echo", "poll", deduplicated=True),
            409: {"error": "plugin 'broken' is invalid: no commands", "code": "conflict"},
        },
        request_body=models.EnqueueRequest,
        request_example=examples.ENQUEUE_REQUEST,
        tags=("plugins",),
    ),
    Operation(
        method="POST",
        path="/job/{job_id}/cancel",
        operation_id="cancel_job",
        summary="Cancel a job",
        description=(
            "A queued job becomes canceled at once. A running job has its subprocess "
            "terminated (SIGTERM, then SIGKILL after the grace period) and becomes canceled; "
            f"the call waits up to {CANCEL_WAIT_SECONDS:.0f} s for that and answers 202 if the "
            "job is still stopping. A finished job is a 409."
        ),
        handler=cancel,
        scope="jobs:rw",
        responses={
            200: ([models.JobDetail, models.JobStatusView], "Canceled."),
            202: ([models.JobDetail, models.JobStatusView], "Cancel requested; still stopping."),
            404: (models.ErrorBody, "No job has this id."),
            409: (models.ErrorBody, "The job already finished."),
        },
        examples={
            200: examples.CANCELED_JOB,
            202: {**examples.JOB_STATUS_VIEW, "status": "running"},
        },
        tags=("jobs",),
    ),
    Operation(
        method="GET",
        path="/schedules",
        operation_id="list_schedules",
        summary="Configured schedules and their state",
        description="Each schedule with its timetable, next and last firing, and last job.",
        handler=list_schedules,
        scope="jobs:ro",
        responses={200: (models.ScheduleList, "The schedules.")},
        examples={200: examples.SCHEDULE_LIST},
        tags=("plugins",),
    ),
)
