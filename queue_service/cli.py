"""The `queue-service` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from queue_service import __version__
from queue_service.api.params import (
    IntegerTooLong,
    encode_cursor,
    parse_cursor,
    parse_json_integer,
    parse_limit,
    parse_source,
    parse_statuses,
)
from queue_service.api.responses import job_view, page_body, to_json
from queue_service.auth import TokenService
from queue_service.bootstrap import (
    DB_ENV,
    DEFAULT_DB,
    StartupError,
    display_db,
    load_registry,
    open_store,
    read_config,
    resolve_config_path,
    resolve_db,
    run_reporting_failures,
)
from queue_service.scopes import SCOPES, UnknownScope
from queue_service.store import Conflict, JobFilter, NewJob, Store, Token
from queue_service.timeutil import now_ts

#: The exit status of a command line that cannot be parsed (argparse's too).
EXIT_USAGE = 2
#: The width `status` lays its tables out in when stdout is not a terminal.
PIPED_WIDTH = 160


def db_path(args: argparse.Namespace) -> str:
    return resolve_db(args.db)


def with_store(
    body: Callable[[Store, argparse.Namespace], Awaitable[int]],
    *,
    must_exist: bool = False,
) -> Callable[[argparse.Namespace], int]:
    """Run `body` with an open store for the command's --db, closing it afterwards.
    With `must_exist` (commands that only read), a missing database is refused."""

    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            store = await open_store(db_path(args), must_exist=must_exist)
            try:
                return await body(store, args)
            finally:
                await store.close()

        return asyncio.run(main())

    return run


# -- migrate -------------------------------------------------------------


async def _migrate(store: Store, args: argparse.Namespace) -> int:
    # open() already migrated; report where the schema stands.
    print(f"{display_db(db_path(args))}: schema version {await store.schema_version()}")
    return 0


# -- copy ----------------------------------------------------------------


def _copy(args: argparse.Namespace) -> int:
    from queue_service.store.portable import CopyError, TableCopy, copy_store

    if args.batch < 1:
        raise StartupError("--batch must be at least 1")

    def progress(done: TableCopy) -> None:
        if args.progress:
            print(f"  {done.table}: {done.copied + done.skipped}/{done.source_rows}", flush=True)

    async def main() -> int:
        source = await open_store(args.source, must_exist=True)
        try:
            target = await open_store(args.target)
            try:
                report = await copy_store(
                    source, target, merge=args.merge, batch=args.batch, progress=progress
                )
            except CopyError as exc:
                raise StartupError(f"copy: {exc}") from None
            finally:
                await target.close()
        finally:
            await source.close()
        print(f"copied {display_db(args.source)} -> {display_db(args.target)}")
        for done in report.tables:
            print(
                f"{done.table:15} source {done.source_rows:>9}  copied {done.copied:>9}  "
                f"skipped {done.skipped:>9}  target now {done.target_rows_after:>9}"
            )
        return 0

    return asyncio.run(main())


# -- tokens --------------------------------------------------------------


async def _token_create(store: Store, args: argparse.Namespace) -> int:
    try:
        secret, _ = await TokenService(store).create(args.name, args.scope, args.expires_in)
    except (UnknownScope, ValueError, Conflict) as exc:
        raise StartupError(str(exc)) from None
    print(secret)
    return 0


async def _token_list(store: Store, args: argparse.Namespace) -> int:
    tokens = await store.list_tokens()
    if args.json:
        rows = [
            {
                "name": t.name,
                "scopes": list(t.scopes),
                "created_at": t.created_at,
                "last_used_at": t.last_used_at,
                "expires_at": t.expires_at,
                "revoked_at": t.revoked_at,
            }
            for t in tokens
        ]
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        [
            t.name,
            ",".join(t.scopes),
            t.created_at[:19],
            (t.last_used_at or "never")[:19],
            (t.expires_at or "never")[:19],
            token_state(t),
        ]
        for t in tokens
    ]
    print_table(["NAME", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "STATE"], table)
    return 0


def token_state(token: Token) -> str:
    if token.revoked_at:
        return "revoked"
    if token.expires_at and token.expires_at <= now_ts():
        return "expired"
    return "live"


async def _token_revoke(store: Store, args: argparse.Namespace) -> int:
    if not await store.revoke_token(args.name):
        raise StartupError(f"no live token named {args.name!r}")
    print(f"revoked {args.name}")
    return 0


# -- jobs ----------------------------------------------------------------


def job_filter(args: argparse.Namespace) -> JobFilter:
    """The filters of `jobs` (and `jobs --watch`), parsed as GET /jobs parses them."""
    try:
        return JobFilter(
            plugin=args.plugin,
            command=args.command,
            statuses=parse_statuses(args.status) if args.status else (),
            sources=parse_source(args.source) if args.source else (),
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


async def _jobs(store: Store, args: argparse.Namespace) -> int:
    from queue_service.terminal import JOB_COLUMNS, job_cells

    filters = job_filter(args)
    try:
        limit = parse_limit(str(args.limit))
        cursor = parse_cursor(args.cursor) if args.cursor else None
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if args.watch:
        return await _watch(store, filters, limit, args)
    page = await store.list_jobs(filters, limit=limit, cursor=cursor)
    next_cursor = encode_cursor(page.next_cursor) if page.next_cursor else None
    if args.json:
        print(to_json(page_body(page), indent=True).decode())
        return 0
    print_table(JOB_COLUMNS, [job_cells(j) for j in page.jobs])
    print(f"\n{len(page.jobs)} of {page.total} matching jobs", end="")
    print(f"; next page: --cursor {next_cursor}" if next_cursor else "")
    return 0


async def _watch(store: Store, filters: JobFilter, limit: int, args: argparse.Namespace) -> int:
    from rich.console import Console

    from queue_service.terminal import watch_jobs

    if args.cursor or args.json:
        raise StartupError("--watch shows the newest jobs; it takes no --cursor or --json")
    console = Console()
    if not console.is_terminal or console.is_dumb_terminal:
        raise StartupError(
            "--watch redraws a terminal (TERM must not be dumb); in a script use "
            "`queue-service jobs --json` or `queue-service status --json`"
        )
    return await watch_jobs(store, filters, limit=limit, interval=args.interval, console=console)


async def _status(store: Store, args: argparse.Namespace) -> int:
    from rich.console import Console

    from queue_service.overview import gather_overview
    from queue_service.terminal import status_view

    path = config_path(args)
    overview = await gather_overview(store, read_config(path) if path else None)
    if args.json:
        print(overview.model_dump_json(indent=2))
        return 0
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or redirected: no terminal width to fit, so tables are as wide as they need.
        console = Console(width=PIPED_WIDTH)
    console.print(status_view(overview))
    return 0


async def _job(store: Store, args: argparse.Namespace) -> int:
    job = await store.get_job(args.job_id)
    if job is None:
        raise StartupError(f"no job with id {args.job_id!r}")
    attempts = await store.get_attempts(job.job_id)
    print(to_json(job_view(job, attempts), indent=True).decode())
    return 0


async def _cancel(store: Store, args: argparse.Namespace) -> int:
    """Cancel every queued local job of a plugin (and command), in batches: the explicit way
    to drop the work of a plugin that is gone."""
    canceled = 0
    reason = (
        args.reason or f"canceled by the operator (queue-service cancel --plugin {args.plugin})"
    )
    while True:
        batch = await store.cancel_queued(
            plugin=args.plugin, command=args.command, reason=reason, limit=500
        )
        canceled += len(batch)
        if len(batch) < 500:
            break
    what = f"{args.plugin} {args.command}" if args.command else args.plugin
    print(f"canceled {canceled} queued job(s) of {what}")
    return 0


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(cell))) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def _enqueue(store: Store, args: argparse.Namespace) -> int:
    from queue_service.plugins import PluginLookupError

    try:
        payload = json.loads(args.payload, parse_int=parse_json_integer)
    except IntegerTooLong as exc:
        raise StartupError(f"--payload: {exc}") from None
    except ValueError as exc:
        raise StartupError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise StartupError('--payload must be a JSON object, e.g. \'{"key": "value"}\'')
    config = read_config(config_path(args))
    registry = load_registry(config)
    if not registry.all():
        raise StartupError(no_plugins_message(config_path(args), config.service.plugin_dirs))
    try:
        plugin, command = registry.resolve(args.plugin, args.command_name)
    except PluginLookupError as exc:
        allowed = ", ".join(exc.allowed) or "none"
        raise StartupError(f"{exc} (available: {allowed})") from None
    problem = command.validate_payload(payload)
    if problem is not None:
        raise StartupError(
            f"payload does not match the input_schema at {problem.path}: {problem.message}"
        )
    result = await store.enqueue(
        NewJob(
            plugin=plugin.name,
            command=command.name,
            payload=payload,
            max_attempts=config.plugin(plugin.name).max_attempts,
            submitted_by="cli",
            dedupe_key=args.dedupe_key,
        )
    )
    print(result.job_id)
    return 0


def no_plugins_message(config_file: str | None, plugin_dirs: Sequence[Path]) -> str:
    if config_file is None:
        return (
            "no plugins are loaded: no config file was given. Pass --config FILE (or set "
            "QUEUE_SERVICE_CONFIG) naming a TOML file whose [service] plugin_dirs lists the "
            "plugin folders, e.g. --config examples/queue-service.toml"
        )
    searched = ", ".join(str(d) for d in plugin_dirs) or "none"
    return (
        f"no plugins are loaded: the [service] plugin_dirs of {config_file} "
        f"(searched: {searched}) hold no plugin folder with a manifest.yaml"
    )


async def _sync_databricks(store: Store, args: argparse.Namespace) -> int:
    from queue_service.databricks.config import DatabricksConfig
    from queue_service.databricks.sync import DatabricksSync

    config = read_config(config_path(args)).databricks or DatabricksConfig()
    sync = DatabricksSync(config, store)
    if not args.once:
        raise StartupError("continuous sync runs inside `serve` or `worker`; use --once here")
    summary = await sync.sync_once()
    for line in summary.lines():
        print(line)
    return 0 if summary.ok else 1


# -- serve and worker ----------------------------------------------------


def config_path(args: argparse.Namespace) -> str | None:
    return resolve_config_path(getattr(args, "config", None))


def _serve(args: argparse.Namespace) -> int:
    from queue_service.server import serve

    return serve(
        db=db_path(args),
        host=args.host,
        port=args.port,
        config_path=config_path(args),
        log_level=args.log_level,
    )


def _worker(args: argparse.Namespace) -> int:
    from queue_service.server import work

    return work(db=db_path(args), config_path=config_path(args), log_level=args.log_level)


def _mcp(args: argparse.Namespace) -> int:
    from queue_service.server import TOKEN_ENV, mcp_stdio

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise StartupError(
            f"queue-service mcp needs a token: set {TOKEN_ENV} (or pass --token, which other "
            "users can see in the process list). The narrowest that reads jobs: "
            "queue-service token create --name agent --scope jobs:status:ro"
        )
    return mcp_stdio(
        db=db_path(args), config_path=config_path(args), token=token, log_level=args.log_level
    )


# -- parser --------------------------------------------------------------


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        help=f"SQLite file (default: ${DB_ENV} or ./{DEFAULT_DB})",
    )


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port (1 to 65535)")
    return int(text)


def interval_seconds(text: str) -> float:
    """An argparse type: seconds between refreshes, 0.1 to 3600."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number of seconds (0.1 to 3600)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="queue-service", description="A local job queue with a REST API."
    )
    parser.add_argument("--version", action="version", version=f"queue-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the API, workers and scheduler")
    _add_db(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8080, help="TCP port (default: 8080)")
    serve.add_argument("--config", help="TOML config file (default: $QUEUE_SERVICE_CONFIG)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker",
        help="run the worker, the scheduler and (with [databricks]) the sync, without HTTP",
    )
    _add_db(worker)
    worker.add_argument("--config", help="TOML config file (default: $QUEUE_SERVICE_CONFIG)")
    worker.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    worker.set_defaults(run=_worker)

    mcp = commands.add_parser(
        "mcp",
        help="serve MCP over stdin/stdout for a local agent host (token from $QS_TOKEN)",
    )
    _add_db(mcp)
    mcp.add_argument("--config", help="TOML config file (default: $QUEUE_SERVICE_CONFIG)")
    mcp.add_argument(
        "--token", help="the bearer token whose scopes the tools get (default: $QS_TOKEN)"
    )
    mcp.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    mcp.set_defaults(run=_mcp)

    enqueue = commands.add_parser("enqueue", help="enqueue a plugin command; prints the job id")
    enqueue.add_argument("plugin")
    enqueue.add_argument("command_name", metavar="COMMAND")
    enqueue.add_argument("--payload", default="{}", help="a JSON object (default: {})")
    enqueue.add_argument("--dedupe-key")
    enqueue.add_argument("--config", help="TOML config file (default: $QUEUE_SERVICE_CONFIG)")
    _add_db(enqueue)
    enqueue.set_defaults(run=with_store(_enqueue))

    sync = commands.add_parser("sync", help="copy external job runs into the store")
    sync_targets = sync.add_subparsers(dest="sync_target", required=True, metavar="SOURCE")
    databricks = sync_targets.add_parser(
        "databricks",
        help="sync Databricks job runs (workspaces from [databricks] in --config, else the "
        "SDK's own resolution: DATABRICKS_HOST/DATABRICKS_TOKEN, ~/.databrickscfg)",
    )
    databricks.add_argument("--once", action="store_true", help="one sync, print a summary")
    databricks.add_argument("--config", help="TOML config file (default: $QUEUE_SERVICE_CONFIG)")
    _add_db(databricks)
    databricks.set_defaults(run=with_store(_sync_databricks))

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    _add_db(migrate)
    migrate.set_defaults(run=with_store(_migrate))

    copy = commands.add_parser(
        "copy",
        help="copy a whole store (jobs, attempts, token hashes, schedule, plugin and sync "
        "state) into another, e.g. SQLite to PostgreSQL; counts are checked on both sides",
    )
    copy.add_argument("--from", dest="source", required=True, help="the store to read")
    copy.add_argument("--to", dest="target", required=True, help="the store to write")
    copy.add_argument(
        "--merge",
        action="store_true",
        help="copy into a store that holds rows, skipping those it already has "
        "(also finishes a copy that was cut short)",
    )
    copy.add_argument("--batch", type=int, default=1000, help="rows per transaction")
    copy.add_argument("--progress", action="store_true", help="print progress per batch")
    copy.set_defaults(run=_copy)

    token = commands.add_parser("token", help="manage bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help=f"repeatable; one of {', '.join(SCOPES)} (quote the star for the shell: --scope '*')",
    )
    create.add_argument("--expires-in", help="lifetime such as 12h or 30d (default: never)")
    _add_db(create)
    create.set_defaults(run=with_store(_token_create))
    listing = token_commands.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--json", action="store_true")
    _add_db(listing)
    listing.set_defaults(run=with_store(_token_list, must_exist=True))
    revoke = token_commands.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    _add_db(revoke)
    revoke.set_defaults(run=with_store(_token_revoke))

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--plugin")
    jobs.add_argument("--command")
    jobs.add_argument("--status", help="status or alias; comma-separated for several")
    jobs.add_argument("--source", help="local or databricks")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--cursor")
    jobs.add_argument("--json", action="store_true", help="print the API's JSON")
    jobs.add_argument(
        "--watch",
        action="store_true",
        help="a live table of the newest jobs, counts by status and queue depth (Ctrl-C quits)",
    )
    jobs.add_argument(
        "--interval",
        type=interval_seconds,
        default=2.0,
        help="seconds between --watch refreshes (default: 2)",
    )
    _add_db(jobs)
    jobs.set_defaults(run=with_store(_jobs, must_exist=True))

    status = commands.add_parser(
        "status",
        help="one-screen summary: counts by status and plugin, oldest queued job, running "
        "jobs, schedules, Databricks sync health",
    )
    status.add_argument("--json", action="store_true", help="print the same data as JSON")
    status.add_argument(
        "--config", help="TOML config file, for schedules (default: $QUEUE_SERVICE_CONFIG)"
    )
    _add_db(status)
    status.set_defaults(run=with_store(_status, must_exist=True))

    cancel = commands.add_parser(
        "cancel", help="cancel the queued jobs of a plugin (e.g. one that is not installed)"
    )
    cancel.add_argument("--plugin", required=True)
    cancel.add_argument("--command", help="only this command's jobs")
    cancel.add_argument("--reason", help="recorded as each job's last_error")
    _add_db(cancel)
    cancel.set_defaults(run=with_store(_cancel, must_exist=True))

    job = commands.add_parser("job", help="show one job")
    job.add_argument("job_id")
    _add_db(job)
    job.set_defaults(run=with_store(_job, must_exist=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            # The OS handed over bytes that are not UTF-8 (Python keeps them as surrogates).
            print(
                f"queue-service: argument {position} is not valid UTF-8: {ascii(arg)[:80]}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    args = build_parser().parse_args(argv)
    return run_reporting_failures(lambda: int(args.run(args)))


if __name__ == "__main__":
    sys.exit(main())
