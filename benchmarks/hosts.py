"""Host lookup latency and reload latency.

Lookups: exact hits, wildcard hits and misses against 10, 1 000 and 100 000 sites (each site
has ``s<i>.example.com`` and ``*.s<i>.example.org``), for:

- ``tenantkit``: :meth:`HostIndex.lookup` on the raw Host value (normalisation included);
- ``werkzeug``: ``Map(host_matching=True)`` with one rule per pattern, ``bind(host).match("/")``
  (the wildcard is a ``<sub>`` placeholder);
- ``regex-list``: a first-match list of compiled regexes, as django-hosts does;
- ``dict.get``: ``d.get(host.lower())`` on the exact names, the floor (it finds no wildcard).

Slow peers are timed on fewer probes (said in the notes) so the run stays bounded; werkzeug is
not built at 100 000 sites (building its map takes minutes).

Reload: with a :class:`SiteWatcher` running on 1 000 site files, the time from a new site
file renamed into place until ``Registry.resolve`` finds it.

    python -m benchmarks.hosts [--quick]
"""

from __future__ import annotations

import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Report, Row, alternate, main, percentile
from tenantkit.config import Settings
from tenantkit.hosts import HostIndex
from tenantkit.registry import Registry
from tenantkit.watch import SiteWatcher

PROBES = 1000
WERKZEUG_MAX_SITES = 1000


def _mapping(n: int) -> dict[str, list[str]]:
    return {f"s{i:06d}": [f"s{i}.example.com", f"*.s{i}.example.org"] for i in range(n)}


def _probes(n: int, kind: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    if kind == "exact hit":
        return [f"s{rng.randrange(n)}.example.com" for _ in range(count)]
    if kind == "wildcard hit":
        return [f"www.s{rng.randrange(n)}.example.org" for _ in range(count)]
    if kind == "miss":
        return [f"nope{rng.randrange(10**6)}.example.net" for _ in range(count)]
    if kind == "exact hit, Host: Name:443":
        return [f"S{rng.randrange(n)}.Example.com:443" for _ in range(count)]
    raise ValueError(kind)


def _loop(fn: Callable[[str], object], probes: list[str]) -> Callable[[], object]:
    def run() -> None:
        for host in probes:
            fn(host)

    return run


def _werkzeug(mapping: dict[str, list[str]]) -> Callable[[str], object]:
    from werkzeug.exceptions import NotFound
    from werkzeug.routing import Map, Rule

    rules = []
    for site, patterns in mapping.items():
        for p in patterns:
            host = "<sub>" + p[1:] if p.startswith("*.") else p
            rules.append(Rule("/", host=host, endpoint=site))
    url_map = Map(rules, host_matching=True)

    def match(host: str) -> object:
        try:
            return url_map.bind(host).match("/")[0]
        except NotFound:
            return None

    return match


def _regex_list(mapping: dict[str, list[str]]) -> Callable[[str], object]:
    rules = []
    for site, patterns in mapping.items():
        for p in patterns:
            wild = p.startswith("*.")
            rx = r"(?:[a-z0-9_-]+\.)+" + re.escape(p[2:]) if wild else re.escape(p)
            rules.append((re.compile(rx + r"(?::\d+)?\Z", re.IGNORECASE), site))

    def match(host: str) -> object:
        for rx, site in rules:
            if rx.match(host):
                return site
        return None

    return match


def _dict(mapping: dict[str, list[str]]) -> Callable[[str], object]:
    exact = {p: site for site, patterns in mapping.items() for p in patterns if "*" not in p}
    get = exact.get
    return lambda host: get(host.lower())


def _lookups(report: Report, quick: bool) -> None:
    sizes = (10, 1_000, 100_000)
    rounds = 7 if quick else 21
    for n in sizes:
        mapping = _mapping(n)
        start = time.perf_counter()
        index = HostIndex(mapping)
        report.notes.append(f"HostIndex build, {n:,} sites ({2 * n:,} patterns): "
                            f"{time.perf_counter() - start:.3f} s")
        peers: dict[str, Callable[[str], object]] = {"tenantkit": index.lookup}
        if n <= WERKZEUG_MAX_SITES:
            start = time.perf_counter()
            peers["werkzeug"] = _werkzeug(mapping)
            report.notes.append(f"werkzeug Map build, {n:,} sites: "
                                f"{time.perf_counter() - start:.2f} s")
        else:
            report.notes.append(f"werkzeug skipped at {n:,} sites: building its Map grows "
                                "faster than linearly (a trial at 10 000 sites took over 5 "
                                "minutes on this machine)")
        peers["regex-list"] = _regex_list(mapping)
        peers["dict.get"] = _dict(mapping)
        kinds = ["exact hit", "wildcard hit", "miss"]
        if n == sizes[-1]:
            kinds.append("exact hit, Host: Name:443")
        for kind in kinds:
            probes = _probes(n, kind, PROBES, seed=n)
            counts: dict[str, int] = {}
            contenders: dict[str, Callable[[], object]] = {}
            for name, fn in peers.items():
                if kind.startswith("exact hit, ") and name not in ("tenantkit", "dict.get"):
                    continue
                count = PROBES
                if name == "regex-list" and n > 1000:
                    count = 5
                elif name == "regex-list" and n == 1000:
                    count = 100
                elif name == "werkzeug" and kind != "exact hit" and n >= 1000:
                    count = 3  # tens of milliseconds per lookup: see the table
                counts[name] = count
                contenders[name] = _loop(fn, probes[:count])
            timings = alternate(contenders, rounds=rounds, number=1)
            per_lookup = {k: [t / counts[k] for t in v] for k, v in timings.items()}
            report.add_group(f"{kind}, {n:,} sites", per_lookup, unit="us",
                             baseline="tenantkit")
            report.notes.append(f"{kind}, {n:,} sites: tenantkit best round "
                                f"{min(per_lookup['tenantkit']) * 1e6:.3f} us")
            short = [f"{k} {c}" for k, c in counts.items() if c != PROBES]
            if short:
                report.notes.append(f"{kind}, {n:,} sites: fewer probes per round for "
                                    f"{', '.join(short)} (of {PROBES})")


def _site_text(host: str) -> str:
    return f'hosts = ["{host}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:1"\n'


def _reload_latency(report: Report, quick: bool) -> None:
    n, trials = 1000, (8 if quick else 25)
    with tempfile.TemporaryDirectory() as tmp:
        sites = Path(tmp) / "sites"
        sites.mkdir()
        for i in range(n):
            (sites / f"s{i}.toml").write_text(_site_text(f"s{i}.example.com"))
        settings = Settings(sites_dir=sites, cache_dir=Path(tmp) / "cache")
        registry = Registry.load(settings)
        # Files written in the last 2 s are parsed again on every reload (their stat may
        # not show a change yet); let the bulk write settle as it would on a server.
        time.sleep(2.1)
        registry.reload()  # parses the settled files once more, and trusts their stat after
        start = time.perf_counter()
        registry.reload()
        report.add_value(f"full rescan, {n:,} unchanged site files", "tenantkit",
                         (time.perf_counter() - start) * 1e3, "ms")
        latencies: list[float] = []
        rng = random.Random(3)
        with SiteWatcher(registry):
            time.sleep(0.3)
            for k in range(trials):
                host = f"new{k}.example.com"
                tmp_file = sites / f".new{k}.toml.tmp"
                tmp_file.write_text(_site_text(host))
                os.replace(tmp_file, sites / f"new{k}.toml")
                t0 = time.perf_counter()
                while registry.resolve(host) is None:
                    if time.perf_counter() - t0 > 5:
                        break
                    time.sleep(0.001)
                latencies.append(time.perf_counter() - t0)
                time.sleep(rng.uniform(0.05, 0.3))
    ms = [x * 1e3 for x in latencies]
    report.rows.append(_row("reload: file renamed in -> resolvable (watcher, 1 000 sites)", ms))
    report.target(f"reload p99 <= 500 ms (got {percentile(ms, 99):.0f} ms)",
                  percentile(ms, 99) <= 500)


def _row(group: str, ms: list[float]) -> Row:
    return Row(group, "tenantkit", statistics.median(ms), percentile(ms, 99), "ms", None,
               len(ms))


def run(quick: bool = False) -> Report:
    report = Report("hosts", "host lookup latency (per lookup) and reload latency")
    _lookups(report, quick)

    def med(group: str, who: str = "tenantkit") -> float:
        return report.median(group, who)

    exact, wild = med("exact hit, 100,000 sites"), med("wildcard hit, 100,000 sites")
    report.target(f"exact hit median <= 1.5 us at 100 000 sites (got {exact:.3f})", exact <= 1.5)
    report.target(f"wildcard hit median <= 3 us at 100 000 sites (got {wild:.3f})", wild <= 3.0)
    for kind in ("exact hit", "wildcard hit", "miss"):
        ratio = med(f"{kind}, 100,000 sites") / med(f"{kind}, 10 sites")
        report.target(f"{kind}: 100 000 / 10 sites <= 1.5 (got {ratio:.2f})", ratio <= 1.5)
    for kind in ("exact hit", "wildcard hit", "miss"):
        group = f"{kind}, 1,000 sites"
        speedup = med(group, "werkzeug") / med(group)
        report.target(f"{kind}: >= 10x faster than werkzeug at 1 000 sites (got {speedup:,.1f}x)",
                      speedup >= 10)
    _reload_latency(report, quick)
    return report


if __name__ == "__main__":
    main(run)
