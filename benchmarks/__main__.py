"""Run benchmarks and write ``benchmarks/results/REPORT.md`` (plots where useful).

``python -m benchmarks`` runs them all; ``python -m benchmarks shim compress`` runs those two
and replaces only their sections of the report, keeping the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import traceback
from pathlib import Path

import benchmarks
from benchmarks.harness import RESULTS, Report

SKIP = {"harness", "__main__"}


def _plot(report: Report) -> str | None:
    """A bar chart of medians per group, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = sorted({r.group for r in report.rows}, key=[r.group for r in report.rows].index)
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 1.6 + 1.2 * len(groups)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups, strict=True):
        rows = [r for r in report.rows if r.group == group]
        ax.barh([r.contender for r in rows], [r.median for r in rows])
        ax.set_title(f"{group} ({rows[0].unit})", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    path = RESULTS / f"{report.name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


HEADER = ["# tenantkit benchmarks", "",
          "Medians of alternating rounds in one process run; ratios against the baseline "
          "named in each group. This machine is shared and noisy: read trends, not digits.", ""]


def _sections(report_md: str) -> dict[str, str]:
    """The sections of an existing REPORT.md by benchmark name (``## name: ...``)."""
    sections: dict[str, str] = {}
    for chunk in report_md.split("\n## ")[1:]:
        name = chunk.split(":", 1)[0].split("\n", 1)[0].strip()
        sections[name] = "## " + chunk.rstrip() + "\n"
    return sections


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args()
    names = args.names or sorted(
        m.name for m in pkgutil.iter_modules([str(Path(benchmarks.__file__).parent)])
        if m.name not in SKIP
    )
    path = RESULTS / "REPORT.md"
    kept = _sections(path.read_text()) if args.names and path.is_file() else {}
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        try:
            report: Report = module.run(args.quick)
        except Exception:
            traceback.print_exc()
            kept[name] = "\n".join([f"## {name}", "", "failed:", "```",
                                    traceback.format_exc(), "```", ""])
            continue
        report.save()
        print(report.table(), flush=True)
        image = _plot(report)
        kept[name] = report.table() + "\n" + (f"\n![{name}]({image})\n" if image else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(HEADER + [kept[name] for name in sorted(kept)]))
    print(json.dumps({"report": str(RESULTS / "REPORT.md")}))


if __name__ == "__main__":
    main()
