"""The shim under load: wrk on loopback against gunicorn with the same settings everywhere.

Contenders, alternating round by round in one run:

- (a) ``bare``: a bare WSGI app returning a page;
- (b) ``tenantkit HIT``: ``tenantkit serve`` answering that page from the page cache;
- (c) ``tenantkit MISS``: ``tenantkit serve`` with every request a cache miss (a wrk script
  asks for a new URL each time): looked up, dispatched to the same app, stored; to tell the
  miss path from the store, ``tenantkit MISS, not stored``: the same page with
  ``Cache-Control: no-store`` (looked up, dispatched, not storable), and ``tenantkit no
  cache``: a site with ``[cache] enabled = false`` (dispatch only);
- (d) ``flask host_matching``: a Flask app with ``host_matching=True`` routing the same page;
- (e) nginx serving the cached page straight from ``cache_dir`` (the `tenantkit nginx-config`
  server block) against nginx serving the same file as plain static.

Issue 17 section 2, in the same run: a 10 KB page from a gunicorn upstream (2 workers),
reached (f) directly, (g) through ``tenantkit serve`` as a proxy site, every request a new
URL (a stored MISS), and (h) through real nginx ``proxy_cache`` in front of the same
upstream, storing the same new pages; MISS latency for one client (p50 and p99 time to last
byte, wrk ``--latency``) against the upstream's own; and ``PageCache.put`` against
cachelib's ``FileSystemCache.set`` (:mod:`benchmarks.invalidate`).

Targets (printed with the table): HIT / bare >= 1.0; MISS p50 and p99 <= 1.10x the upstream
direct; stored-MISS throughput >= 0.8x nginx proxy_cache; nginx from cache_dir >= 0.95x
nginx static; put >= 1.0x cachelib set; and the older (c) MISS / bare >= 0.85. Run
``python -m benchmarks.shim``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.harness import Report, Row, main
from benchmarks.invalidate import _throughput
from tenantkit.testing import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = (b"<!doctype html><html><head><title>bench</title></head><body>"
        + b"<p>tenantkit benchmark page</p>" * 40 + b"</body></html>\n")
HOST = "bench.test"
PROXY_HOST = "proxy.test"
#: The page the upstream of section 2 answers: 10 KB, as in the issue.
PAGE_10K = (b"<!doctype html><html><head><title>bench</title></head><body>"
            + b"<p>tenantkit upstream page, ten kilobytes</p>" * 230 + b"</body></html>\n")
NOCACHE_HOST = "nocache.test"
NOSTORE_HOST = "nostore.test"
#: The gunicorn settings every contender gets (the same as `tenantkit serve`'s).
WORKERS = 2
#: Contenders whose every request asks for a new URL (a miss that stores a page).
MISSES = frozenset({"tenantkit MISS", "tenantkit stored MISS (proxy)",
                    "nginx proxy_cache stored MISS", "upstream direct"})
#: Every site's backend.max_concurrency: the saturating clients (16 connections) reach the
#: backends whenever they miss, and the limit (4 per worker by default: one more is a 503)
#: must not be what is measured.
LIMIT = "max_concurrency = 64\n"
#: Contenders of the one-client MISS latency comparison.
LATENCY = ["upstream direct", "tenantkit stored MISS (proxy)", "nginx proxy_cache stored MISS"]


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """(a) and the sites' backend: a page, nothing else."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE)))])
    return [PAGE]


def upstream_app(environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
    """(f) the upstream of section 2: a 10 KB page for any URL."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE_10K)))])
    return [PAGE_10K]


def nostore_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The page of ``bare_app``, marked as not storable."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE))), ("Cache-Control", "no-store")])
    return [PAGE]


def _store_floor(directory: Path, rounds: int = 500) -> float:
    """Microseconds of CPU the file system takes to store one new page in *directory* the
    least a file cache can do: a directory, then two files each written and renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    for i in range(rounds):
        page = directory / f"p{i}"
        os.mkdir(page)
        for name in ("index.html", ".meta.json"):
            fd = os.open(page / ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, PAGE)
            os.close(fd)
            os.rename(page / ".tmp", page / name)
    elapsed = (time.process_time() - start) / rounds * 1e6
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed


def _flask_app() -> Any:
    from flask import Flask

    app = Flask("bench", host_matching=True, static_host=HOST)

    @app.route("/<path:path>", host=HOST)
    @app.route("/", host=HOST, defaults={"path": ""})
    def page(path: str) -> tuple[bytes, int, dict[str, str]]:
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}

    return app


def __getattr__(name: str) -> Any:  # gunicorn loads benchmarks.shim:flask_app lazily
    if name == "flask_app":
        return _flask_app()
    raise AttributeError(name)


def _gunicorn_args() -> list[str]:
    from tenantkit.web.server import GUNICORN_DEFAULTS as d

    return ["-w", str(WORKERS), "-k", str(d["worker_class"]), "--threads", str(d["threads"]),
            "--keep-alive", str(d["keepalive"]), "-t", str(d["timeout"])]


class _Proc:
    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.port = port
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        wait_port(port, timeout=30.0, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_UNIQUE_PATHS = """
local n = 0
local id = 0
function setup(thread)
  id = id + 1
  thread:set("id", id)
end
function request()
  n = n + 1
  return wrk.format("GET", "/miss/" .. PREFIX .. "-" .. id .. "-" .. n .. "/")
end
"""


def _wrk(url: str, host: str, seconds: int, script: Path | None = None) -> tuple[float, int]:
    """(requests per second, requests) of one wrk run."""
    extra = ["-s", str(script)] if script is not None else []
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "-H", f"Host: {host}", *extra, url],
        capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rate is None or count is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk against {url} ({host}) failed or saw errors:\n{out}")
    return float(rate.group(1)), int(count.group(1))


def _wrk_latency(url: str, host: str, seconds: int, script: Path) -> tuple[float, float]:
    """(p50, p99) milliseconds to the last byte for one client (wrk -t1 -c1 --latency)."""
    out = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-H", f"Host: {host}",
         "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    found = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match is None or "Non-2xx" in out:
            raise RuntimeError(f"wrk --latency against {url} ({host}) failed:\n{out}")
        found[pct] = float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
    return found["50"], found["99"]


def _cpu_seconds(pid: int) -> float:
    """User and system CPU of process *pid* and its children (gunicorn's workers), from /proc."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _nginx_conf(prefix: Path, server_blocks: str) -> Path:
    conf = prefix / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {prefix}/body;\n"
        f" proxy_temp_path {prefix}/proxy;\n fastcgi_temp_path {prefix}/fcgi;\n"
        f" uwsgi_temp_path {prefix}/uwsgi;\n scgi_temp_path {prefix}/scgi;\n"
        f"{server_blocks}\n}}\n")
    return conf


def run(quick: bool = False) -> Report:
    from tenantkit.config import Settings
    from tenantkit.export.nginx import render_config

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    seconds = 1 if quick else 2
    rounds = 2 if quick else 4
    report = Report("shim", f"requests/s under wrk (-t2 -c16, {seconds:g}s per sample), "
                            f"gunicorn gthread {WORKERS} workers")
    work = Path(tempfile.mkdtemp(prefix="tenantkit-bench-shim-"))
    procs: list[_Proc] = []
    try:
        sites_dir, cache_dir = work / "sites", work / "cache"
        sites_dir.mkdir()
        (sites_dir / "bench.toml").write_text(
            f'hosts = ["{HOST}"]\n[backend]\ntype = "wsgi"\napp = "benchmarks.shim:bare_app"\n'
            f"{LIMIT}[cache]\nttl = 3600\n")
        (sites_dir / "nocache.toml").write_text(
            f'hosts = ["{NOCACHE_HOST}"]\n[backend]\ntype = "wsgi"\n'
            f'app = "benchmarks.shim:bare_app"\n{LIMIT}[cache]\nenabled = false\n')
        ports = {name: free_port() for name in ("bare", "tenantkit", "flask", "upstream")}
        (sites_dir / "proxy.toml").write_text(
            f'hosts = ["{PROXY_HOST}"]\n[backend]\ntype = "proxy"\n'
            f'url = "http://127.0.0.1:{ports["upstream"]}"\n'
            f"{LIMIT}[cache]\nttl = 3600\n")
        (sites_dir / "nostore.toml").write_text(
            f'hosts = ["{NOSTORE_HOST}"]\n[backend]\ntype = "wsgi"\n'
            f'app = "benchmarks.shim:nostore_app"\n{LIMIT}')
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
        env.update(TENANTKIT_SITES_DIR=str(sites_dir), TENANTKIT_CACHE_DIR=str(cache_dir),
                   TENANTKIT_DATABASE_PRIMARY=f"sqlite:///{work}/tk.db",
                   TENANTKIT_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        bindir = Path(sys.executable).parent
        gunicorn = [str(bindir / "gunicorn"), *_gunicorn_args()]
        procs.append(_Proc([*gunicorn, "-b", f"127.0.0.1:{ports['bare']}",
                            "benchmarks.shim:bare_app"], ports["bare"], env))
        procs.append(_Proc([*gunicorn, "-b", f"127.0.0.1:{ports['flask']}",
                            "benchmarks.shim:flask_app"], ports["flask"], env))
        procs.append(_Proc([str(bindir / "tenantkit"), "serve", "--bind",
                            f"127.0.0.1:{ports['tenantkit']}", "--workers", str(WORKERS)],
                           ports["tenantkit"], env, cwd=work))
        upstream = _Proc([*gunicorn, "-b", f"127.0.0.1:{ports['upstream']}",
                          "benchmarks.shim:upstream_app"], ports["upstream"], env)
        procs.append(upstream)
        tk = f"http://127.0.0.1:{ports['tenantkit']}/page/"
        for _ in range(3):  # fill the cache (and check the HIT really is one)
            check = subprocess.run(["curl", "-si", "-H", f"Host: {HOST}", tk],
                                   capture_output=True, text=True, check=False).stdout
        if "X-Tenantkit-Cache: HIT" not in check:
            raise RuntimeError(f"the tenantkit page is not a cache hit:\n{check[:500]}")

        contenders: dict[str, tuple[str, str]] = {
            "bare": (f"http://127.0.0.1:{ports['bare']}/page/", HOST),
            "tenantkit HIT": (tk, HOST),
            "tenantkit MISS": (tk.removesuffix("page/"), HOST),
            "tenantkit MISS, not stored": (tk, NOSTORE_HOST),
            "tenantkit no cache": (tk, NOCACHE_HOST),
            "flask host_matching": (f"http://127.0.0.1:{ports['flask']}/page/", HOST),
        }
        # (e): nginx with the generated config vs plain static, same file.
        nginx_port, static_port, shim_port = free_port(), free_port(), ports["tenantkit"]
        static_root = work / "static"
        (static_root / "page").mkdir(parents=True)
        page_file = next((cache_dir / "bench" / "pages" / "current" / HOST / "page").glob(
            "index.html"))
        shutil.copy(page_file, static_root / "page" / "index.html")
        settings = Settings(sites_dir=sites_dir, cache_dir=cache_dir)
        block = render_config(settings, upstream=f"127.0.0.1:{shim_port}",
                              listen=f"127.0.0.1:{nginx_port}")
        block += (f"\nserver {{\n listen 127.0.0.1:{static_port};\n root {static_root};\n"
                  " location / { default_type text/html; charset utf-8; "
                  "add_header X-Tenantkit-Cache HIT; }\n}\n")
        # (h): nginx's own proxy_cache in front of the same upstream, keep-alive to it.
        prefix = work / "nginx"
        prefix.mkdir()
        proxy_cache_port = free_port()
        block += (f"\nproxy_cache_path {prefix}/proxy_cache levels=1:2 keys_zone=tk:10m "
                  "max_size=1g inactive=1h use_temp_path=off;\n"
                  f"upstream tk_upstream {{ server 127.0.0.1:{ports['upstream']}; "
                  "keepalive 32; }\n"
                  f"server {{\n listen 127.0.0.1:{proxy_cache_port};\n location / {{\n"
                  "  proxy_pass http://tk_upstream; proxy_http_version 1.1;\n"
                  '  proxy_set_header Connection ""; proxy_set_header Host $host;\n'
                  "  proxy_cache tk; proxy_cache_valid 200 1h;\n }\n}\n")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(_Proc([nginx, "-p", str(prefix), "-c", str(_nginx_conf(prefix, block)),
                            "-g", "daemon off;"], nginx_port))
        wait_port(static_port, timeout=30.0, proc=procs[-1].proc)
        contenders["nginx cache_dir"] = (f"http://127.0.0.1:{nginx_port}/page/", HOST)
        contenders["nginx static"] = (f"http://127.0.0.1:{static_port}/page/", HOST)
        proxy_url = f"http://127.0.0.1:{ports['tenantkit']}/"
        contenders["upstream direct"] = (f"http://127.0.0.1:{ports['upstream']}/",
                                         PROXY_HOST)
        contenders["tenantkit stored MISS (proxy)"] = (proxy_url, PROXY_HOST)
        contenders["nginx proxy_cache stored MISS"] = (
            f"http://127.0.0.1:{proxy_cache_port}/", PROXY_HOST)

        samples: dict[str, list[float]] = {name: [] for name in contenders}
        # Server CPU per request: steadier than req/s on a shared machine.
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        server = {"bare": procs[0], "flask host_matching": procs[1],
                  "upstream direct": upstream}
        runs = 0

        def unique_paths() -> Path:
            """A wrk script asking for a new URL every request, new ones every run."""
            nonlocal runs
            runs += 1
            script = work / f"miss-{runs}.lua"
            script.write_text(f'PREFIX = "r{runs}"\n' + _UNIQUE_PATHS)
            return script

        def sample(name: str, url: str, host: str, seconds: int) -> float:
            script = unique_paths() if name in MISSES else None
            pid = server.get(name, procs[2]).proc.pid
            before = _cpu_seconds(pid)
            rate, count = _wrk(url, host, seconds, script)
            cpu[name].append((_cpu_seconds(pid) - before) / count)
            if script is not None and name != "upstream direct":
                # The pages just written are still being written back: let that finish
                # before the next contender's sample, or it pays for them.
                os.sync()
                time.sleep(1)
            return rate

        for name, (url, host) in contenders.items():  # warm up
            sample(name, url, host, 1)
        for values in (*samples.values(), *cpu.values()):
            values.clear()
        order = list(contenders)
        for round_ in range(rounds):
            # A different order every round: no contender always follows the same one.
            for name in order[round_ % len(order):] + order[:round_ % len(order)]:
                url, host = contenders[name]
                samples[name].append(sample(name, url, host, seconds))
        # One client, a new page every request: time to the last byte.
        latency: dict[str, list[tuple[float, float]]] = {name: [] for name in LATENCY}
        for round_ in range(max(2, rounds // 2)):
            for name in LATENCY[round_ % 3:] + LATENCY[:round_ % 3]:
                url, host = contenders[name]
                latency[name].append(_wrk_latency(url, host, seconds, unique_paths()))
                os.sync()
        floor = _store_floor(cache_dir / "floor-probe")
    finally:
        for proc in reversed(procs):
            proc.stop(signal.SIGQUIT if "nginx" in str(proc.proc.args[0]) else signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in samples.items()}

    def ratio(name: str, base: str) -> float:
        """The median of the round-by-round ratios: pairing within a round cancels the
        shared machine's slow drifts, the median drops the rounds a short slow spell hit."""
        return statistics.median(a / b for a, b in zip(samples[name], samples[base],
                                                        strict=True))

    ratios = {}
    for name in ("bare", "tenantkit HIT", "tenantkit MISS", "tenantkit MISS, not stored",
                 "tenantkit no cache", "flask host_matching"):
        ratios[name] = ratio(name, "bare")
        report.add_value("gunicorn", name, med[name], "req/s", ratios[name])
    for name in ("nginx static", "nginx cache_dir"):
        ratios[name] = ratio(name, "nginx static")
        report.add_value("nginx", name, med[name], "req/s", ratios[name])
    for name in ("nginx proxy_cache stored MISS", "tenantkit stored MISS (proxy)",
                 "upstream direct"):
        ratios[name] = ratio(name, "nginx proxy_cache stored MISS")
        report.add_value("10 KB from a gunicorn upstream, every request a new page", name,
                         med[name], "req/s", ratios[name])
    p50 = {n: statistics.median(v[0] for v in values) for n, values in latency.items()}
    p99 = {n: statistics.median(v[1] for v in values) for n, values in latency.items()}
    for name in LATENCY:
        report.rows.append(Row("MISS latency, 1 client (time to last byte)", name, p50[name],
                               p99[name], "ms", p50[name] / p50["upstream direct"],
                               len(latency[name])))
    report.add_group("server CPU per request (gunicorn processes)",
                     {name: cpu[name] for name in ratios
                      if not name.startswith("nginx") and name in cpu},
                     unit="us", baseline="bare")
    os.sync()  # the pages the MISS runs wrote must not be written back during the puts
    _throughput(True, report)  # PageCache.put / get against cachelib (short: the bound)
    put_ratio = report.median("page put (27 KB)", "cachelib") / report.median(
        "page put (27 KB)", "tenantkit")
    tk_miss, direct = "tenantkit stored MISS (proxy)", "upstream direct"
    report.target(f"HIT / bare >= 1.0 (got {ratios['tenantkit HIT']:.2f})",
                  ratios["tenantkit HIT"] >= 1.0)
    report.target(f"MISS p50 <= 1.10x the upstream direct (got {p50[tk_miss] / p50[direct]:.2f}x)",
                  p50[tk_miss] <= 1.10 * p50[direct])
    report.target(f"MISS p99 <= 1.10x the upstream direct (got {p99[tk_miss] / p99[direct]:.2f}x)",
                  p99[tk_miss] <= 1.10 * p99[direct])
    nginx_miss = "nginx proxy_cache stored MISS"
    report.notes.append(
        f"reference for the MISS latency targets: nginx proxy_cache's own stored MISS, one "
        f"client, p50 {p50[nginx_miss] / p50[direct]:.2f}x / p99 "
        f"{p99[nginx_miss] / p99[direct]:.2f}x the upstream direct (a second HTTP hop in C)")
    report.target(f"stored-MISS throughput >= 0.8x nginx proxy_cache (got {ratios[tk_miss]:.2f}x)",
                  ratios[tk_miss] >= 0.8)
    report.target(f"nginx from cache_dir >= 0.95x nginx static "
                  f"(got {ratios['nginx cache_dir']:.2f}x)", ratios["nginx cache_dir"] >= 0.95)
    report.target(f"PageCache.put >= 1.0x cachelib FileSystemCache.set (got {put_ratio:.2f}x)",
                  put_ratio >= 1.0)
    report.target(f"(c) tenantkit MISS / bare >= 0.85 (got {ratios['tenantkit MISS']:.2f})",
                  ratios["tenantkit MISS"] >= 0.85)
    report.notes.append("ratio column: the median over rounds of req/s relative to the "
                        "group's baseline in the same round (higher is better); samples per "
                        f"contender: {rounds}; median column: median req/s; the CPU group's "
                        "ratio: median CPU per request relative to bare's (lower is better)")
    report.notes.append("(c) MISS: every request a new URL, looked up, rendered and stored "
                        "(page file and sidecar); 'MISS, not stored': looked up and rendered, "
                        "the response says no-store; 'no cache': a site with the page cache "
                        "disabled, dispatch only")
    report.notes.append(f"the file system's floor for storing one new page in cache_dir "
                        f"(mkdir, two files written and renamed): {floor:.0f} us of CPU; "
                        f"at the bare app's rate the machine spends {2e6 / med['bare']:.0f} us "
                        f"of CPU (both cores, wrk included) per request")
    return report


if __name__ == "__main__":
    main(run)
