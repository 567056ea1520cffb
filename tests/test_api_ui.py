"""The /ui files as the app serves them, and what they may contain; tests/test_ui.py runs them
in a browser."""

from __future__ import annotations

import re
import typing
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest

from queue_service.api.ui import CONTENT_SECURITY_POLICY, FILES
from queue_service.databricks.status import WorkspaceState
from queue_service.statuses import STATUSES, AttemptStatus
from tests.conftest import assert_error

STATIC = resources.files("queue_service.api.ui") / "static"


def static_text(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


@pytest.mark.anyio
@pytest.mark.parametrize("path", sorted(FILES))
async def test_each_file_is_served_with_the_policy_and_no_token(
    client: httpx.AsyncClient, path: str
) -> None:
    name, media_type = FILES[path]
    for response in (await client.get(path), await client.head(path)):
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert (await client.get(path)).content == (STATIC / name).read_bytes()


@pytest.mark.anyio
async def test_other_paths_under_ui_are_canonical_errors(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/ui/"), 404, "not_found")
    assert_error(await client.get("/ui/index.html"), 404, "not_found")
    body = assert_error(await client.post("/ui"), 405, "method_not_allowed")
    assert sorted(body["allowed"]) == ["GET", "HEAD"]


def test_the_policy_allows_nothing_inline_and_nothing_from_elsewhere() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self'",
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'none'",
    }


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.references += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self.inline += [f"{tag} {k}" for k, _ in attrs if k == "style" or k.startswith("on")]
        if tag == "style" or (tag == "script" and "src" not in values):
            self.inline.append(tag)

    def handle_data(self, data: str) -> None:
        pass


def test_the_page_loads_only_its_own_files_and_has_nothing_inline() -> None:
    page = _Page()
    page.feed(static_text("index.html"))
    assert page.inline == []
    assert sorted(r for r in page.references if not r.startswith("#")) == [
        "/ui/app.css",
        "/ui/app.js",
        "data:,",  # no favicon request
    ]


def test_the_script_never_makes_markup_or_code_from_text() -> None:
    script = static_text("app.js")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setAttribute('style'",
    ):
        assert sink not in script, sink
    # Timers get functions, never strings.
    assert not re.search(r"setTimeout\(\s*['\"`]", script)


def test_every_status_and_state_has_a_badge_colour() -> None:
    style = static_text("app.css")
    words = {
        *STATUSES,
        *(s.value for s in AttemptStatus),
        *typing.get_args(WorkspaceState),
        "valid",
        "invalid",
    }
    missing = sorted(w for w in words if not re.search(rf"\.st-{w}\b", style))
    assert missing == []
