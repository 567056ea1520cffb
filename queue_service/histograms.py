"""Prometheus histograms that are cheap to scrape: plain counts per label set, written
straight into the text format.

prometheus_client's Histogram builds a Sample (a tuple and a labels dict) for every bucket
of every series on each scrape, and its generate_latest then checks every label name of every
line again: with a series per plugin command and outcome, that alone took a scrape past its
10 ms budget. Here a series keeps its bucket counts in a list and the text of its label
set, made once; a scrape writes one short line per bucket. `collect()` still gives the
standard HistogramMetricFamily, for prometheus_client's own encoders (a test checks that
both say the same).

Not thread-safe: observe and scrape from one thread (the event loop, in the service).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

#: prometheus_client's number format (Go's, as Prometheus writes them: 1e+06, +Inf, NaN).
format_number: Callable[[float], str] = floatToGoString


def escape_label_value(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and newline escaped."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def escape_help(text: str) -> str:
    """A HELP text as the text format writes it: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """`a="x",b="y"`: the inside of a sample's braces."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


class _Series:
    __slots__ = ("counts", "labels", "sum")

    def __init__(self, buckets: int, labels: str) -> None:
        self.counts = [0] * buckets  # per bucket (not cumulative), the last one is +Inf
        self.sum = 0.0
        self.labels = labels


class Histogram:
    """A histogram with fixed label names; `observe(("a", "b"), 0.3)` counts one value."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._le = [format_number(b) for b in self.bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = _Series(len(self.bounds) + 1, label_text(self.labelnames, labels))
            self._series[labels] = series
        # A value equal to a bound belongs to that bound's bucket (le: less or equal).
        series.counts[bisect_left(self.bounds, value)] += 1
        series.sum += value

    def text(self) -> str:
        """This histogram in the Prometheus text format 0.0.4."""
        name = self.name
        out = [f"# HELP {name} {escape_help(self.documentation)}\n# TYPE {name} histogram\n"]
        for series in self._series.values():
            labels = series.labels
            before_le = f"{labels}," if labels else ""
            braced = f"{{{labels}}}" if labels else ""
            total = 0
            for le, count in zip(self._le, series.counts, strict=True):
                total += count
                out.append(f'{name}_bucket{{{before_le}le="{le}"}} {total}\n')
            out.append(f"{name}_count{braced} {total}\n")
            out.append(f"{name}_sum{braced} {format_number(series.sum)}\n")
        return "".join(out)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in self._series.items():
            cumulative, total = [], 0
            for le, count in zip(self._le, series.counts, strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric(list(labels), cumulative, series.sum)
        yield family
