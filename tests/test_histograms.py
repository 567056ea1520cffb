"""queue_service.histograms against prometheus_client's own Histogram: the same
observations give the same samples, in our text format and in the library's families."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as ReferenceHistogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from queue_service.histograms import Histogram

BUCKETS = (0.005, 0.01, 0.25, 1.0, 60.0)
#: Values below, on and between the bounds, beyond the last one, and a few oddities.
VALUES = (0.0, 0.001, 0.005, 0.0051, 0.01, 0.2, 0.25, 1.0, 59.9, 60.0, 61.0, 1e6, 3.3)
LABELS = (("a", "x"), ("a", "y"), ('q"uote', "back\\slash"), ("new\nline", "ünï"))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


@pytest.fixture
def pair() -> tuple[Histogram, CollectorRegistry]:
    ours = Histogram("h_seconds", "How long.", ["plugin", "command"], BUCKETS)
    registry = CollectorRegistry(auto_describe=False)
    reference = ReferenceHistogram(
        "h_seconds", "How long.", ["plugin", "command"], registry=registry, buckets=BUCKETS
    )
    for index, value in enumerate(VALUES):
        labels = LABELS[index % len(LABELS)]
        ours.observe(labels, value)
        reference.labels(*labels).observe(value)
    return ours, registry


def test_the_text_format_matches_prometheus_client(
    pair: tuple[Histogram, CollectorRegistry],
) -> None:
    ours, registry = pair
    expected = samples(generate_latest(registry).decode())
    assert samples(ours.text()) == expected
    # Every value was counted once, in +Inf, whatever its label set.
    infinite = [v for (name, labels), v in expected.items() if ("le", "+Inf") in labels]
    assert sum(infinite) == len(VALUES)


def test_collect_gives_the_standard_family(pair: tuple[Histogram, CollectorRegistry]) -> None:
    ours, registry = pair
    mine = CollectorRegistry(auto_describe=False)
    mine.register(ours)
    assert samples(generate_latest(mine).decode()) == samples(generate_latest(registry).decode())


def test_sums_are_exact_per_label_set(pair: tuple[Histogram, CollectorRegistry]) -> None:
    ours, _ = pair
    got = samples(ours.text())
    for offset, labels in enumerate(LABELS):
        key = frozenset(zip(("plugin", "command"), labels, strict=True))
        expected = math.fsum(VALUES[offset :: len(LABELS)])
        assert got[("h_seconds_sum", key)] == pytest.approx(expected)
