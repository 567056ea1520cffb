"""GET /: the index a person or an agent finds at the base URL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from queue_service import __version__
from queue_service.models import ServiceIndex

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


async def test_the_index_needs_no_token_and_its_links_lead_somewhere(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    index = ServiceIndex.model_validate(response.json())
    assert (index.name, index.version) == ("queue-service", __version__)
    assert (await client.get(index.links.openapi)).json()["paths"]["/"]["get"]["security"] == []
    assert (await client.get(index.links.health)).json()["status"] == "ok"
    # /mcp is there, and behind the bearer check.
    answer = await client.post(index.links.mcp, json={})
    assert (answer.status_code, answer.json()["code"]) == (401, "unauthorized")
    for path in index.docs.values():
        assert (ROOT / path).is_file(), path


async def test_the_index_takes_no_parameters(client: httpx.AsyncClient) -> None:
    response = await client.get("/?x=1")
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_parameter"
