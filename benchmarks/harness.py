"""The common harness every benchmark uses.

A benchmark module defines ``run(quick: bool = False) -> Report`` and ends with::

    if __name__ == "__main__":
        main(run)

Contenders run in the same process, alternating round by round so that a noisy neighbour
hurts all of them alike::

    timings = alternate({"tenantkit": ours, "werkzeug": theirs}, rounds=21, number=1000)
    report = Report("hosts", "lookup latency, 1 000 sites")
    report.add_group("exact hit", timings, unit="us", per_call=1000, baseline="tenantkit")
    report.target("exact hit median <= 1.5 us", report.median("exact hit", "tenantkit") <= 1.5)
    return report
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def alternate(
    contenders: Mapping[str, Callable[[], object]], *, rounds: int = 15, number: int = 1,
    warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time each contender ``rounds`` times, alternating; each sample calls it ``number``
    times and records the total seconds of ``clock`` (``time.process_time`` for CPU time).
    Returns name -> samples."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in contenders.items():
                start = clock()
                for _ in range(number):
                    fn()
                samples[name].append(clock() - start)
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def percentile(values: list[float], pct: float) -> float:
    """The *pct* percentile (0-100) of *values*, by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class Row:
    group: str
    contender: str
    median: float
    p99: float
    unit: str
    ratio: float | None  # median / baseline median (lower is faster for times)
    samples: int


@dataclass
class Report:
    """Medians and ratios for one benchmark, printed as a table and written as JSON."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[tuple[str, bool | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plot: dict[str, Any] | None = None

    def add_group(
        self, group: str, timings: Mapping[str, list[float]], *, unit: str = "us",
        per_call: int = 1, baseline: str | None = None,
    ) -> None:
        """Add one row per contender; times in seconds per sample of ``per_call`` calls."""
        scale = _SCALE[unit] / per_call
        medians = {n: statistics.median(s) * scale for n, s in timings.items()}
        base = medians.get(baseline) if baseline else None
        for name, values in timings.items():
            self.rows.append(Row(
                group, name, medians[name], percentile(values, 99) * scale, unit,
                medians[name] / base if base else None, len(values),
            ))

    def add_value(self, group: str, contender: str, value: float, unit: str,
                  ratio: float | None = None) -> None:
        """Add a measured quantity that is not a timing (bytes, ops/s, ...)."""
        self.rows.append(Row(group, contender, value, value, unit, ratio, 1))

    def median(self, group: str, contender: str) -> float:
        for row in self.rows:
            if row.group == group and row.contender == contender:
                return row.median
        raise KeyError((group, contender))

    def target(self, text: str, met: bool | None) -> None:
        """A target and whether it was met (None: nothing measured to tell)."""
        self.targets.append((text, met))

    def table(self) -> str:
        lines = [f"## {self.name}: {self.title}", "",
                 "| group | contender | median | p99 | ratio |", "|---|---|---:|---:|---:|"]
        for r in self.rows:
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
            lines.append(f"| {r.group} | {r.contender} | {r.median:,.3f} {r.unit} | "
                         f"{r.p99:,.3f} {r.unit} | {ratio} |")
        if self.targets:
            lines += ["", "Targets:"]
            lines += [f"- [{'?' if met is None else 'x' if met else ' '}] {text}"
                      for text, met in self.targets]
        if self.notes:
            lines += [""] + [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        payload = {
            "name": self.name, "title": self.title,
            "rows": [r.__dict__ for r in self.rows],
            "targets": [{"text": t, "met": m} for t, m in self.targets],
            "notes": self.notes, "plot": self.plot,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path.write_text(json.dumps(payload, indent=2))
        return path


def main(run: Callable[[bool], Report]) -> Report:
    """Command-line entry for one benchmark module: ``--quick`` for a short run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    args = parser.parse_args()
    report = run(args.quick)
    print(report.table())
    print(f"\nwrote {report.save()}")
    return report
