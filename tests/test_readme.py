"""README and help texts a first-time user copies from: the quickstart says what it does, and
every `--scope '*'` survives the shell."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from queue_service.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: `--scope *` or `--scope=*` unquoted: the shell expands the `*` to the file names around.
UNQUOTED_STAR = re.compile(r"--scope[ =]\*")


def quickstart() -> str:
    start = README.index("## Quickstart")
    return README[start : README.index("\n## ", start + 1)]


def token_create_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["token", "create", "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_no_unquoted_star_scope_in_the_docs(path: Path) -> None:
    assert not UNQUOTED_STAR.search(path.read_text(encoding="utf-8"))


def test_the_help_shows_the_star_scope_quoted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no line break inside the example
    text = token_create_help(capsys)
    assert "--scope '*'" in text and not UNQUOTED_STAR.search(text)
    assert "--scope '*'" in README


def test_the_quickstart_says_it_runs_in_the_foreground() -> None:
    text = quickstart()
    assert "foreground" in text and "second terminal" in text
    assert "Ctrl-C" in text


def test_the_quickstart_says_how_to_use_another_port() -> None:
    assert re.search(r"--port [0-9]+", quickstart())


def test_the_quickstart_says_what_the_example_schedule_does() -> None:
    config = tomllib.loads((ROOT / "examples" / "queue-service.toml").read_text())
    heartbeat = next(s for s in config["plugins"]["echo"]["schedules"] if s["id"] == "heartbeat")
    assert heartbeat["every"] == "5m"  # the sentence below is written for this interval
    assert "`heartbeat` schedule" in quickstart() and "every 5 minutes" in quickstart()
