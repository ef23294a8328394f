"""Soak (issue 23): three WordPress sites under load and faults behind ``tenantkit serve``.

The stack, as an operator builds it, on loopback only: Debian's ``wordpress`` package (one
tree, Debian's own ``wp-config.php`` reading the ``config-<host>.php`` that
``tenantkit provision --print-wp-config --debian`` printed, the drop-in as ``db.php``) served
by one ``php -S`` upstream; a real MariaDB primary and GTID replica; Redis; ``tenantkit serve``
(gunicorn, 2 workers) and ``tenantkit invalidator`` over Redis Streams. Policy ``site``: a
comment flushes its site's page cache.

The load: 8 visitor connections reading the 12 pages (each site's front page and 3 posts) as
fast as they are answered; anonymous comments at 1.5/s through ``wp-comments-post.php``. During
the load, in turn: Redis paused 8 s (SIGSTOP), Redis killed and restarted on its port, the
replica's SQL thread stopped 10 s, PHP paused 5 s (SIGSTOP of its process group), the
invalidator restarted. Then the writes stop and the visitors read on for a settle period.

Printed: writes acknowledged / lost / duplicated, pages stale after the settle (each page as
served against a fresh render by PHP and the comments in the database), the time for an
acknowledged comment to show on its post's page, 5xx per fault, HIT latency, throughput per
second against the steady rate, whole-site flushes per site against the comments, renders per
page per purge (from :func:`tenantkit.cache.nodecounters.read_node_counters`), and PASS/FAIL
per target. It never gates: the exit status is 0 whatever the figures::

    python -m benchmarks.soak [--quick] [--duration SECONDS] [--keep DIR]

How the figures are read:

- Latencies and statuses are measured at the client, per response: each visitor is a process
  of its own (eight threads of one process measured their wait for its GIL too).
- A fault's segment runs from its start to the next fault's start: its 5xx include the
  recovery. Status 0 is a request that got no answer (it counts with the 5xx).
- "Outside the PHP pause": for the time to show, comments sent from 5 s before the pause to
  its end are left out (printed apart); for throughput, the seconds that touch the pause and
  the one after it. The steady rate is the median second before the first fault (the first
  two left out).
- Flushes, purges, coalesced purges, renders and stale pages served are the node counters'
  growth over the load (every process of the node); the rise of each site's
  ``current -> gN`` link counts its flushes independently. Flushes per site may exceed the
  comments by one per fault (events lost while Redis or the invalidator was away flush a
  site once). Renders per page per purge = renders / ((flushes + purges) x the site's pages):
  above 1, a page was rendered twice on the node for one purge. A target with no counts
  says NO DATA, which is not a pass.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import os
import queue
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Report, percentile
from tenantkit import layout
from tenantkit.cache.nodecounters import (
    COALESCED,
    FLUSHES,
    KINDS,
    PURGES,
    RENDERS,
    STALE_SERVED,
    read_node_counters,
)
from tenantkit.testing import DATABASE, MariaDBCluster, RedisServer
from tenantkit.testing.commands import TENANTKIT, Command, Shim
from tenantkit.testing.wordpress import (
    PhpServer,
    debian_site_config,
    install,
    make_tree,
    write_debian_config,
)

DURATION = 90.0
QUICK_DURATION = 30.0
SETTLE = 5.0
SITES = 3
POSTS = 3                 # per site, besides the front page: 12 pages in all
VISITORS = 8
COMMENT_RATE = 1.5        # per second
WRITERS = 4               # connections posting comments (a slow one does not delay the next)
TIMEOUT = 30.0            # any one request
#: Targets (issue 23).
SHOW_WITHIN = 5.0         # s, an acknowledged comment on its page, outside the PHP pause
HIT_WORST = 0.100         # s
THROUGHPUT_FLOOR = 0.5    # of the steady rate, every second outside the PHP pause
#: (name, start as a fraction of the load, nominal seconds); nominal lengths shrink with
#: shorter runs (``--quick``) in proportion.
FAULTS = (
    ("redis paused", 0.17, 8.0),
    ("redis restarted", 0.37, 0.0),
    ("replica SQL thread stopped", 0.53, 10.0),
    ("php paused", 0.72, 5.0),
    ("invalidator restarted", 0.87, 0.0),
)
PHP_PAUSE = "php paused"
STEADY = "steady"

#: The soak's must-use plugin. All visitors come from 127.0.0.1: WordPress's flood check
#: would refuse every comment but one per 15 s. Post titles carry their comment count, so the
#: front page changes with every comment too.
MU_PLUGIN = """<?php
remove_action('check_comment_flood', 'check_comment_flood_db', 10);
add_filter('comment_flood_filter', '__return_false', 99);
add_filter('the_title', static function ($title, $id = 0) {
    return is_admin() || !$id ? $title : $title . ' [' . get_comments_number($id) . ' comments]';
}, 10, 2);
"""
TOKEN = re.compile(rb"soak[0-9a-f]{6}x\d{5}")
COUNT = re.compile(rb"\[(\d+) comments\]")


# --- what was measured, and the figures made of it (pure: tests/benchmarks) -----------------

@dataclass(frozen=True)
class Page:
    site: str
    host: str
    path: str
    post_id: int | None  # None: the front page


@dataclass
class Comment:
    token: str
    page: int             # index into the pages
    sent: float
    acked: float | None = None
    status: int = 0       # 0: no answer (timeout, refused)
    held: bool = False    # acknowledged but held for moderation
    shown: float | None = None


@dataclass(frozen=True)
class Window:
    name: str
    start: float
    end: float            # the fault's own end (== start for an instant one)


@dataclass
class Sample:
    """One visitor response: when it ended, its latency, status (0: no answer), X-Cache, the
    page's index."""

    end: float
    latency: float
    status: int
    cache: str
    page: int


def segments(windows: Sequence[Window], duration: float) -> list[tuple[str, float, float]]:
    """The load cut at each fault's start: ``[(STEADY, 0, first start), (fault, start, next
    start), ..., (last fault, start, duration)]`` -- a fault's segment holds its recovery."""
    cuts = [(STEADY, 0.0)] + [(w.name, w.start) for w in sorted(windows, key=lambda w: w.start)]
    out = []
    for i, (name, start) in enumerate(cuts):
        end = cuts[i + 1][1] if i + 1 < len(cuts) else duration
        out.append((name, start, end))
    return out


def segment_of(t: float, cuts: Sequence[tuple[str, float, float]]) -> str | None:
    for name, start, end in cuts:
        if start <= t < end:
            return name
    return None


def per_second(ends: Sequence[float], duration: float) -> list[int]:
    """Responses completed in each whole second ``[i, i + 1)`` of ``[0, duration)``."""
    buckets = [0] * int(duration)
    for t in ends:
        if 0 <= t < len(buckets):
            buckets[int(t)] += 1
    return buckets


def excluded_seconds(window: Window | None, tail: float = 1.0) -> set[int]:
    """The whole seconds that touch *window* (and *tail* seconds after it)."""
    if window is None:
        return set()
    return set(range(int(window.start), int(window.end + tail) + 1))


def throughput_figures(buckets: Sequence[int], steady_end: float, skip: set[int],
                       warmup: int = 2) -> tuple[float, int, int | None]:
    """``(steady rate, lowest second outside skip, that second)``: the steady rate is the
    median of the seconds before the first fault (the first *warmup* left out)."""
    steady = [n for i, n in enumerate(buckets) if warmup <= i < int(steady_end)]
    if not steady:
        steady = [n for i, n in enumerate(buckets) if i < int(steady_end)] or [0]
    rate = float(statistics.median(steady))
    candidates = [(n, i) for i, n in enumerate(buckets) if i not in skip]
    if not candidates:
        return rate, 0, None
    low, at = min(candidates)
    return rate, low, at


def show_delays(comments: Sequence[Comment], excluded: Window | None, settle_end: float,
                margin: float = SHOW_WITHIN) -> tuple[list[float], list[float], int]:
    """``(delays counted, delays left out, never shown)`` for acknowledged comments not held
    for moderation: delay = first seen on its page - acknowledged (never below 0). Left out:
    comments sent from *margin* seconds before *excluded* (the PHP pause) to its end. A
    counted comment never shown has the delay ``settle_end - acked`` (a lower bound)."""
    counted: list[float] = []
    left_out: list[float] = []
    never = 0
    for c in comments:
        if c.acked is None or c.held:
            continue
        if c.shown is None:
            never += 1
            delay = settle_end - c.acked
        else:
            delay = max(0.0, c.shown - c.acked)
        if excluded is not None and excluded.start - margin <= c.sent <= excluded.end:
            left_out.append(delay)
        else:
            counted.append(delay)
    return counted, left_out, never


@dataclass
class SegmentRow:
    """What the visitors got in one segment of the load."""

    name: str
    start: float
    end: float
    requests: int = 0
    errors: int = 0       # 5xx
    unanswered: int = 0   # status 0
    miss: int = 0
    stale: int = 0
    worst_hit: float = 0.0
    codes: dict[int, int] = field(default_factory=dict)  # every status but 200
    low: int | None = None  # the fewest responses in one whole second inside the segment


def segment_rows(samples: Sequence[Sample], cuts: Sequence[tuple[str, float, float]]
                 ) -> list[SegmentRow]:
    rows = {name: SegmentRow(name, start, end) for name, start, end in cuts}
    seconds: dict[str, dict[int, int]] = {name: {} for name, _, _ in cuts}
    for s in samples:
        name = segment_of(s.end, cuts)
        if name is None:
            continue
        row = rows[name]
        row.requests += 1
        row.errors += s.status >= 500
        row.unanswered += s.status == 0
        row.miss += s.cache == "MISS"
        row.stale += s.cache == "STALE"
        if s.cache == "HIT":
            row.worst_hit = max(row.worst_hit, s.latency)
        if s.status != 200:
            row.codes[s.status] = row.codes.get(s.status, 0) + 1
        per = seconds[name]
        per[int(s.end)] = per.get(int(s.end), 0) + 1
    for row in rows.values():
        inside = range(int(row.start) + 1 if row.start % 1 else int(row.start), int(row.end))
        counts = [seconds[row.name].get(i, 0) for i in inside]
        row.low = min(counts) if counts else None
    return list(rows.values())


def segment_table(rows: Sequence[SegmentRow]) -> list[str]:
    """One line per segment, aligned, under a header."""
    lines = [f"  {'segment':27s} {'from s':>6s} {'requests':>8s} {'5xx':>5s} {'no ans':>6s} "
             f"{'MISS':>5s} {'STALE':>6s} {'min/s':>6s} {'worst HIT':>9s}  statuses"]
    for r in rows:
        low = "-" if r.low is None else str(r.low)
        lines.append(f"  {r.name:27s} {r.start:6.1f} {r.requests:8d} {r.errors:5d} "
                     f"{r.unanswered:6d} {r.miss:5d} {r.stale:6d} {low:>6s} "
                     f"{r.worst_hit * 1e3:7.1f}ms  {r.codes or ''}")
    return lines


def page_facts(body: bytes) -> tuple[frozenset[bytes], tuple[int, ...]]:
    """What must be current on a page: the soak comments shown, the comment counts."""
    return frozenset(TOKEN.findall(body)), tuple(int(n) for n in COUNT.findall(body))


def is_stale(served: bytes, fresh: bytes, truth: set[str] | None) -> bool:
    """A served page is stale when its facts differ from a fresh render's, or (a post's page)
    its comments differ from the database's approved ones (*truth*)."""
    if page_facts(served) != page_facts(fresh):
        return True
    return truth is not None and {t.decode() for t in page_facts(served)[0]} != truth


def counter_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
                  ) -> dict[str, dict[str, int]]:
    return {kind: {site: n - before.get(kind, {}).get(site, 0)
                   for site, n in after.get(kind, {}).items()} for kind in KINDS}


def renders_per_page_per_purge(renders: int, purges: int, pages: int) -> float | None:
    """Renders of a site over (its purges and flushes x its pages); None without purges."""
    if purges <= 0 or pages <= 0:
        return None
    return renders / (purges * pages)


def generation(cache_dir: Path, site: str) -> int | None:
    """N of the site's ``current -> gN`` link: a whole-site flush makes the next one, so its
    rise counts flushes independently of the node counters (None when unreadable)."""
    try:
        target = os.readlink(layout.pages_dir(layout.site_root(cache_dir, site)) / layout.CURRENT)
    except OSError:
        return None
    found = re.fullmatch(r"g(\d+)", os.path.basename(target))
    return int(found.group(1)) if found else None


def server_hit_durations(path: Path, start: int, end: int) -> str:
    """The HITs' time in the shim from its access log between byte offsets *start* and *end*
    (text format: ``cache=HIT duration=0.0008``), as a line to print."""
    with open(path, "rb") as log:
        log.seek(start)
        text = log.read(max(0, end - start))
    found = [float(d) for d in re.findall(rb"cache=HIT duration=([0-9.]+)", text)]
    if not found:
        return "HIT time in the shim: not in its access log"
    return (f"HIT time in the shim (access log, {len(found)} HITs): p99 "
            f"{percentile(found, 99) * 1e3:.1f} ms, worst {max(found) * 1e3:.1f} ms")


def verdict(met: bool | None) -> str:
    return "NO DATA" if met is None else ("PASS" if met else "FAIL")


# --- the stack ----------------------------------------------------------------------------

@dataclass
class Stack:
    """The running stack (see :func:`stack`): the servers, the pages, each site's table
    prefix."""

    root: Path
    pair: MariaDBCluster
    redis: RedisServer
    php: PhpServer
    shim: Shim
    invalidator: Command
    pages: list[Page]
    cache_dir: Path
    prefixes: dict[str, str]

    def primary_rows(self, sql: str, args: object = None) -> list[tuple[object, ...]]:
        return self.pair.primary.query(sql, args)


def _provision(root: Path, config: Path, env: dict[str, str], name: str, host: str,
               upstream: str, prefix: str) -> str:
    """``tenantkit provision ... --print-wp-config --debian``, as an operator runs it."""
    result = subprocess.run(
        [str(TENANTKIT), "--config", str(config), "provision", name, "--host", host,
         "--upstream", upstream, "--table-prefix", prefix, "--print-wp-config", "--debian"],
        capture_output=True, text=True, env=env, cwd=root, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"provision {name} failed: {result.stderr[-2000:]}")
    return result.stdout


def _create_posts(pair: MariaDBCluster, prefix: str, count: int) -> list[int]:
    """Post 1 (WordPress's "Hello world!") and *count* - 1 copies of it, published."""
    ids = [1]
    for n in range(2, count + 1):
        pair.primary.query(
            f"INSERT INTO {DATABASE}.{prefix}posts (post_author, post_date, post_date_gmt, "
            "post_content, post_title, post_excerpt, post_status, comment_status, ping_status, "
            "post_name, to_ping, pinged, post_modified, post_modified_gmt, "
            "post_content_filtered, post_type) SELECT post_author, post_date, post_date_gmt, "
            "post_content, %s, '', 'publish', 'open', 'open', %s, '', '', post_modified, "
            f"post_modified_gmt, '', 'post' FROM {DATABASE}.{prefix}posts WHERE ID = 1",
            (f"Soak post {n}", f"soak-post-{n}"))
        ids.append(int(pair.primary.query(f"SELECT MAX(ID) FROM {DATABASE}.{prefix}posts")[0][0]))
    for option, value in (("comment_previously_approved", "0"), ("permalink_structure", ""),
                          ("comment_moderation", "0"), ("page_comments", "0"),
                          ("comments_notify", "0"), ("moderation_notify", "0")):
        pair.primary.query(f"UPDATE {DATABASE}.{prefix}options SET option_value = %s "
                           "WHERE option_name = %s", (value, option))
    return ids


@contextlib.contextmanager
def stack(root: Path, log: Callable[[str], None]) -> Iterator[Stack]:
    with MariaDBCluster(replicas=1) as pair, RedisServer(root / "redis") as redis:
        tree = make_tree(root / "wp", {})
        etc = root / "etc"
        etc.mkdir()
        write_debian_config(tree, etc)
        (tree / "wp-content" / "mu-plugins" / "soak.php").write_text(MU_PLUGIN)
        config = root / "tenantkit.toml"
        config.write_text(
            f'sites_dir = "{root}/sites"\ncache_dir = "{root}/cache"\n'
            f'[database]\nprimary = "{pair.primary_url}"\nreplicas = ["{pair.replica_url}"]\n'
            f'[bus]\ntransport = "redis"\nredis_url = "{redis.url}"\nnode = "soak"\n'
            "[cache]\nttl = 600\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
        env["TENANTKIT_CONFIG"] = str(config)
        with PhpServer(tree, root / "php.log") as php:
            pages: list[Page] = []
            prefixes: dict[str, str] = {}
            for n in range(1, SITES + 1):
                name, host, prefix = f"soak{n}", f"soak{n}.test", f"wp{n}_"
                printed = _provision(root, config, env, name, host, php.url, prefix)
                (etc / f"config-{host}.php").write_text(debian_site_config(
                    printed, {"WP_DEBUG": False, "TENANTKIT_STATE_DIR": str(root)}))
                install(php.url, f"Soak blog {n}", host=host)
                prefixes[name] = prefix
                pages.append(Page(name, host, "/", None))
                pages += [Page(name, host, f"/?p={i}", i)
                          for i in _create_posts(pair, prefix, POSTS)]
            pair.wait_replicas()
            log(f"WordPress: {SITES} sites, {len(pages)} pages, php -S at {php.url}")
            invalidator = Command(root, env, "invalidator", ready="invalidator for")
            try:
                shim = Shim(root, env, "--workers", "2", "--server", "gunicorn")
                try:
                    yield Stack(root, pair, redis, php, shim, invalidator, pages,
                                root / "cache", prefixes)
                finally:
                    shim.stop()
            finally:
                invalidator.stop()


# --- the load -----------------------------------------------------------------------------

#: What a visitor process sends back: its responses as (end, latency, status, X-Cache, page)
#: with times in ``time.monotonic()`` seconds (one clock for every process), and when it
#: first saw each comment token on each page.
Visited = tuple[list[tuple[float, float, int, str, int]], dict[tuple[str, int], float]]


def visit(index: int, port: int, pages: list[Page], reading: Any, out: Any) -> None:
    """One visitor, in a process of its own: reads the pages in turn on one keep-alive
    connection while *reading* is set, then sends :data:`Visited` on *out*. Processes, not
    threads: the latency measured is the shim's (and the machine's), not the wait for this
    client's GIL among eight busy threads."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    samples: list[tuple[float, float, int, str, int]] = []
    seen: dict[tuple[str, int], float] = {}
    out.send("ready")
    reading.wait(TIMEOUT)
    n = index
    while reading.is_set():
        page_index = n % len(pages)
        n += 1
        start = time.monotonic()
        try:
            status, cache, body = _get(conn, pages[page_index])
        except (OSError, http.client.HTTPException):
            conn.close()
            now = time.monotonic()
            samples.append((now, now - start, 0, "", page_index))
            continue
        end = time.monotonic()
        samples.append((end, end - start, status, cache, page_index))
        if status == 200:
            for token in TOKEN.findall(body):
                seen.setdefault((token.decode(), page_index), end)
    conn.close()
    out.send((samples, seen))

def _get(conn: http.client.HTTPConnection, page: Page) -> tuple[int, str, bytes]:
    conn.request("GET", page.path, headers={"Host": page.host})
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, resp.getheader("X-Tenantkit-Cache", ""), body


def _process_event() -> Any:
    return multiprocessing.get_context("spawn").Event()


@dataclass
class Load:
    """The visitors, the comment writers and their schedule, and what they saw; times are
    seconds since ``t0``, the start of the load."""

    stack: Stack
    t0: float = field(default_factory=time.monotonic)
    samples: list[list[Sample]] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    reading: Any = field(default_factory=_process_event)
    writing: threading.Event = field(default_factory=threading.Event)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def collect(self, visited: list[Visited]) -> None:
        """Take in what the visitor processes saw: their samples, and when each comment was
        first seen on its post's page."""
        self.samples = [[Sample(end - self.t0, latency, status, cache, page)
                         for end, latency, status, cache, page in mine] for mine, _ in visited]
        for comment in self.comments:
            if comment.acked is None or comment.held:
                continue  # never shown: refused, or held for moderation
            times = [seen[comment.token, comment.page] for _, seen in visited
                     if (comment.token, comment.page) in seen]
            if times:
                comment.shown = min(times) - self.t0

    def writer(self, jobs: queue.Queue[Comment | None]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.stack.shim.port, timeout=TIMEOUT)
        while True:
            comment = jobs.get()
            if comment is None:
                break
            page = self.stack.pages[comment.page]
            form = (f"comment_post_ID={page.post_id}&author=Soak+visitor&"
                    f"email={comment.token}%40example.org&url=&submit=Post+Comment&"
                    f"comment=Comment+{comment.token}+from+the+soak")
            comment.sent = self.now()
            try:
                conn.request("POST", "/wp-comments-post.php", body=form, headers={
                    "Host": page.host, "Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                continue
            comment.status = resp.status
            location = resp.getheader("Location", "")
            if resp.status in (302, 303) and "#comment-" in location:
                comment.acked = self.now()
                comment.held = "unapproved=" in location
        conn.close()

    def schedule(self, jobs: queue.Queue[Comment | None], duration: float) -> None:
        posts = [i for i, p in enumerate(self.stack.pages) if p.post_id is not None]
        k = 0
        while self.writing.is_set():
            due = k / COMMENT_RATE
            if due >= duration:
                break
            wait = due - self.now()
            if wait > 0:
                time.sleep(wait)
            # Sites in turn, and the posts of each in turn.
            page = posts[(k % SITES) * POSTS + (k // SITES) % POSTS]
            comment = Comment(f"soak{self.run_id}x{k:05d}", page, self.now())
            self.comments.append(comment)
            jobs.put(comment)
            k += 1


def _fault(stack: Stack, name: str, length: float) -> None:
    if name == "redis paused":
        assert stack.redis.proc is not None
        stack.redis.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(length)
        finally:
            stack.redis.proc.send_signal(signal.SIGCONT)
    elif name == "redis restarted":
        stack.redis.stop(kill=True)
        stack.redis.start()
    elif name == "replica SQL thread stopped":
        stack.pair.replica.query("STOP REPLICA SQL_THREAD")
        try:
            time.sleep(length)
        finally:
            stack.pair.replica.query("START REPLICA SQL_THREAD")
    elif name == PHP_PAUSE:
        stack.php.pause()
        try:
            time.sleep(length)
        finally:
            stack.php.resume()
    elif name == "invalidator restarted":
        stack.invalidator.restart()
    else:
        raise ValueError(name)


def _warm(stack: Stack, log: Callable[[str], None]) -> None:
    """Every page a HIT (the invalidator's first start flushes every site once)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.shim.port, timeout=TIMEOUT)
    deadline = time.monotonic() + 60
    try:
        for page in stack.pages:
            while True:
                status, cache, _ = _get(conn, page)
                if status == 200 and cache == "HIT":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{page} not cached within 60 s: {status} {cache}")
                time.sleep(0.05)
    finally:
        conn.close()
    log("warm: every page is a HIT")


def _rss_kb(pid: int) -> int:
    """Resident memory of *pid* and its children, in KiB (0 when unreadable)."""
    total = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for one in [pid, *map(int, children)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _truth(stack: Stack) -> tuple[dict[tuple[str, int], set[str]], dict[str, int]]:
    """From the primary: the approved soak comments per (site, post), and how many rows
    each token has (any status)."""
    per_post: dict[tuple[str, int], set[str]] = {}
    rows: dict[str, int] = {}
    for site, prefix in stack.prefixes.items():
        for post_id, content, approved in stack.primary_rows(
                f"SELECT comment_post_ID, comment_content, comment_approved "
                f"FROM {DATABASE}.{prefix}comments WHERE comment_content LIKE 'Comment soak%%'"):
            for token in TOKEN.findall(str(content).encode()):
                rows[token.decode()] = rows.get(token.decode(), 0) + 1
                if approved == "1":
                    per_post.setdefault((site, int(str(post_id))), set()).add(token.decode())
    return per_post, rows


def _stale_pages(stack: Stack) -> list[str]:
    per_post, _ = _truth(stack)
    stale = []
    shim = http.client.HTTPConnection("127.0.0.1", stack.shim.port, timeout=TIMEOUT)
    php = http.client.HTTPConnection("127.0.0.1", stack.php.port, timeout=TIMEOUT)
    try:
        for page in stack.pages:
            _, cache, served = _get(shim, page)
            _, _, fresh = _get(php, page)
            truth = None if page.post_id is None else per_post.get((page.site, page.post_id),
                                                                   set())
            if is_stale(served, fresh, truth):
                stale.append(f"{page.host}{page.path} ({cache})")
    finally:
        shim.close()
        php.close()
    return stale


def _tracebacks(stack: Stack) -> dict[str, int]:
    logs = {"serve": stack.shim.log, "invalidator": stack.invalidator.log,
            "php": stack.root / "php.log"}
    out = {}
    for name, path in logs.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        out[name] = text.count("Traceback") + text.count("PHP Fatal")
    return out


# --- the run ------------------------------------------------------------------------------

def soak(duration: float, log: Callable[[str], None] = print,
         keep: Path | None = None) -> Report:
    """Build the stack, run the load and the faults for *duration* seconds, return the
    figures. With *keep*, the stack's directory (logs, caches, configuration) is made there
    and left behind."""
    scale = min(1.0, duration / DURATION)
    with contextlib.ExitStack() as exits:
        if keep is None:
            root = Path(exits.enter_context(tempfile.TemporaryDirectory(
                prefix="tenantkit-soak-")))
        else:
            keep.mkdir(parents=True)
            root = keep.resolve()
            log(f"keeping the stack's files in {root}")
        st = exits.enter_context(stack(root, log))
        _warm(st, log)
        # A process writes its counter file at most once a second and the rest at exit:
        # restarted, the shim's workers write what the warm-up rendered, so that the
        # counters' growth from here is the load's alone.
        st.shim.restart()
        _warm(st, log)
        before = read_node_counters(st.cache_dir)
        gens_before = {site: generation(st.cache_dir, site) for site in st.prefixes}
        rss_start = _rss_kb(st.shim.proc.pid)
        load = Load(st)
        jobs: queue.Queue[Comment | None] = queue.Queue()
        spawn = multiprocessing.get_context("spawn")
        pipes = [spawn.Pipe(duplex=False) for _ in range(VISITORS)]
        visitors = [spawn.Process(target=visit, daemon=True, args=(
            i, st.shim.port, st.pages, load.reading, send)) for i, (_, send) in enumerate(pipes)]
        for process in visitors:
            process.start()
        for receive, _ in pipes:  # each started (imports done) before the clock starts
            if not receive.poll(TIMEOUT) or receive.recv() != "ready":
                raise RuntimeError("a visitor process did not start")
        load.writing.set()
        threads = [threading.Thread(target=load.writer, args=(jobs,), daemon=True)
                   for _ in range(WRITERS)]
        scheduler = threading.Thread(target=load.schedule, args=(jobs, duration), daemon=True)
        load.t0 = time.monotonic()
        cpu0, load0 = os.times(), os.getloadavg()[0]
        log_from = st.shim.log.stat().st_size
        load.reading.set()
        for thread in [*threads, scheduler]:
            thread.start()
        windows: list[Window] = []
        try:
            for name, at, nominal in FAULTS:
                wait = at * duration - load.now()
                if wait > 0:
                    time.sleep(wait)
                start = load.now()
                _fault(st, name, max(1.0, nominal * scale) if nominal else 0.0)
                windows.append(Window(name, start, load.now()))
                log(f"  {start:6.1f} s  {name} ({windows[-1].end - start:.1f} s)")
            time.sleep(max(0.0, duration - load.now()))
        except BaseException:
            load.reading.clear()  # the visitors stop too before the stack goes away
            raise
        finally:
            load.writing.clear()
            scheduler.join(TIMEOUT)
            for _ in range(WRITERS):
                jobs.put(None)
            for thread in threads:
                thread.join(2 * TIMEOUT)
        writes_done = load.now()
        cpu1, load1 = os.times(), os.getloadavg()[0]
        busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        machine = (f"the soak's own client used {busy / writes_done:.2f} cores; the machine's "
                   f"load average went {load0:.1f} -> {load1:.1f} (2 shared cores: noisy)")
        st.pair.wait_replicas(timeout=30)
        settle_end = writes_done + SETTLE
        time.sleep(max(0.0, settle_end - load.now()))
        load.reading.clear()
        visited: list[Visited] = []
        for (receive, _), process in zip(pipes, visitors, strict=True):
            if not receive.poll(2 * TIMEOUT):
                raise RuntimeError(f"visitor process {process.pid} sent nothing")
            visited.append(receive.recv())
            process.join(TIMEOUT)
        load.collect(visited)
        rss_end = _rss_kb(st.shim.proc.pid)
        served_hits = server_hit_durations(st.shim.log, log_from, st.shim.log.stat().st_size)
        stale = _stale_pages(st)
        _, rows = _truth(st)
        st.shim.stop()  # every process writes its counts as it exits
        st.invalidator.stop()
        after = read_node_counters(st.cache_dir)
        gens = {site: _minus(generation(st.cache_dir, site), gens_before[site])
                for site in st.prefixes}
        return _figures(st, load, windows, duration, settle_end, stale, rows,
                        counter_delta(before, after), gens, (rss_start, rss_end),
                        _tracebacks(st), machine + "; " + served_hits, log)


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def _figures(st: Stack, load: Load, windows: list[Window], duration: float, settle_end: float,
             stale: list[str], rows: dict[str, int], counters: dict[str, dict[str, int]],
             gens: dict[str, int | None], rss: tuple[int, int], tracebacks: dict[str, int],
             machine: str, log: Callable[[str], None]) -> Report:
    report = Report("soak", f"3 WordPress sites, {VISITORS} visitors, {COMMENT_RATE:g} "
                            f"comments/s, {duration:g} s with faults")
    samples = sorted((s for mine in load.samples for s in mine), key=lambda s: s.end)
    php = next((w for w in windows if w.name == PHP_PAUSE), None)
    out: list[str] = []

    # Writes.
    acked = [c for c in load.comments if c.acked is not None]
    lost = [c.token for c in acked if rows.get(c.token, 0) == 0]
    dupes = [t for t, n in rows.items() if n > 1]
    unacked_stored = sum(1 for c in load.comments if c.acked is None and rows.get(c.token))
    out.append(f"writes: {len(load.comments)} sent, {len(acked)} acknowledged "
               f"({sum(c.held for c in acked)} held for moderation), {len(lost)} lost, "
               f"{len(dupes)} duplicated; {len(load.comments) - len(acked)} not acknowledged "
               f"({unacked_stored} of them stored anyway)")
    answered = [c.acked - c.sent for c in acked if c.acked is not None]
    if answered:
        out.append(f"comment posts answered in p50 {percentile(answered, 50):.2f} s, worst "
                   f"{max(answered):.2f} s; not acknowledged: "
                   + (", ".join(f"{c.token} ({c.status or 'no answer'}) at {c.sent:.1f} s"
                                for c in load.comments if c.acked is None) or "none"))
    report.add_value("writes", "acknowledged", len(acked), "comments")
    report.add_value("writes", "lost", len(lost), "comments")
    report.add_value("writes", "duplicated", len(dupes), "comments")
    report.target("0 acknowledged writes lost or duplicated", not lost and not dupes)

    # Stale pages.
    out.append(f"stale pages after a {SETTLE:g} s settle: {len(stale)} of {len(st.pages)}"
               + (f": {', '.join(stale)}" if stale else ""))
    report.add_value("pages stale after settle", "pages", len(stale), "pages")
    report.target("0 pages stale after the settle", not stale)

    # Time to show.
    counted, left_out, never = show_delays(load.comments, php, settle_end)
    if counted:
        p50, p95, worst = (percentile(counted, 50), percentile(counted, 95), max(counted))
        out.append(f"comment shown after acknowledgement: p50 {p50:.2f} s, p95 {p95:.2f} s, "
                   f"worst {worst:.2f} s over {len(counted)} comments ({never} never shown; "
                   f"{len(left_out)} around the PHP pause left out, their worst "
                   f"{max(left_out, default=0):.2f} s)")
        report.add_value("comment shown", "p50", p50, "s")
        report.add_value("comment shown", "p95", p95, "s")
        report.add_value("comment shown", "worst", worst, "s")
        report.target(f"worst time to show <= {SHOW_WITHIN:g} s outside the PHP pause",
                      worst <= SHOW_WITHIN)
    else:
        out.append("comment shown: no acknowledged comment to measure")
        report.target(f"worst time to show <= {SHOW_WITHIN:g} s outside the PHP pause", False)

    # 5xx (and no answer at all) per fault.
    cuts = segments(windows, duration)
    rows5 = segment_rows(samples, cuts)
    writes_5xx = sum(1 for c in load.comments if c.status >= 500)
    out.append("per fault (each segment runs from the fault's start to the next):")
    out += segment_table(rows5)
    out.append(f"comment posts: {writes_5xx} answered 5xx")
    for row in rows5:
        report.add_value("5xx", row.name, row.errors, "responses")
    total_5xx = sum(row.errors + row.unanswered for row in rows5) + writes_5xx
    report.target("0 5xx (or unanswered) responses", total_5xx == 0)

    # HIT latency.
    hit_samples = [s for s in samples if s.cache == "HIT"]
    hits = [s.latency for s in hit_samples]
    kinds = {k: sum(1 for s in samples if s.cache == k) for k in ("HIT", "STALE", "MISS")}
    if hits:
        slowest = max(hit_samples, key=lambda s: s.latency)
        over = sum(1 for h in hits if h > HIT_WORST)
        out.append(f"HIT latency (at the client): p50 {percentile(hits, 50) * 1e3:.1f} ms, p99 "
                   f"{percentile(hits, 99) * 1e3:.1f} ms, worst {max(hits) * 1e3:.1f} ms at "
                   f"{slowest.end:.1f} s, {over} over {HIT_WORST * 1e3:g} ms "
                   f"(responses: {kinds})")
        report.add_value("HIT latency", "p99", percentile(hits, 99) * 1e3, "ms")
        report.add_value("HIT latency", "worst", max(hits) * 1e3, "ms")
    report.target(f"HIT latency never > {HIT_WORST * 1e3:g} ms",
                  bool(hits) and max(hits) <= HIT_WORST)

    # Throughput.
    buckets = per_second([s.end for s in samples], duration)
    steady_end = windows[0].start if windows else duration
    rate, low, at = throughput_figures(buckets, steady_end, excluded_seconds(php))
    ratio = low / rate if rate else 0.0
    out.append(f"throughput: steady {rate:.0f}/s; lowest second outside the PHP pause "
               f"{low}/s at {at} s ({ratio:.0%}); per second: {' '.join(map(str, buckets))}")
    report.add_value("throughput", "steady", rate, "req/s")
    report.add_value("throughput", "lowest outside PHP pause", low, "req/s", ratio)
    report.target(f"throughput >= {THROUGHPUT_FLOOR:.0%} of steady every second outside the "
                  "PHP pause", rate > 0 and ratio >= THROUGHPUT_FLOOR)

    # Flushes vs events, renders per page per purge.
    events = {site: sum(1 for c in acked if st.pages[c.page].site == site)
              for site in st.prefixes}
    pages = {site: sum(1 for p in st.pages if p.site == site) for site in st.prefixes}
    allowance = len(FAULTS)
    flush_ok: list[bool] = []
    render_ok: list[bool] = []
    for site in st.prefixes:
        flushes = counters[FLUSHES].get(site, 0)
        purges = counters[PURGES].get(site, 0)
        renders = counters[RENDERS].get(site, 0)
        rpp = renders_per_page_per_purge(renders, flushes + purges, pages[site])
        seen = {k: sum(1 for s in samples if s.cache == k and st.pages[s.page].site == site)
                for k in ("MISS", "STALE")}
        out.append(f"{site}: {flushes} whole-site flushes, {purges} purges, "
                   f"{counters[COALESCED].get(site, 0)} coalesced for {events[site]} comments "
                   f"(generations advanced: {gens.get(site)}); {renders} renders, "
                   f"{counters[STALE_SERVED].get(site, 0)} stale served (visitors saw "
                   f"{seen['MISS']} MISS, {seen['STALE']} STALE); renders per page per purge "
                   + ("n/a" if rpp is None else f"{rpp:.2f}"))
        report.add_value("flushes per site", site, flushes, "flushes",
                         flushes / events[site] if events[site] else None)
        if rpp is not None:
            report.add_value("renders per page per purge", site, rpp, "renders")
            render_ok.append(rpp <= 1.0)
        if flushes or purges or renders:
            flush_ok.append(flushes <= events[site] + allowance)
    report.target(f"whole-site flushes per site <= comments + {allowance} (one per fault)",
                  all(flush_ok) if flush_ok else None)
    report.target("renders per page per purge <= 1 (one per node)",
                  all(render_ok) if render_ok else None)
    out.append(f"shim memory (master + workers): {rss[0] // 1024} MiB at the start, "
               f"{rss[1] // 1024} MiB at the end")
    out.append("tracebacks (PHP fatals) in the logs: "
               + ", ".join(f"{name} {n}" for name, n in tracebacks.items()))
    report.target("no traceback or PHP fatal in the logs", not any(tracebacks.values()))
    out.append(machine)
    out.append("faults: " + "; ".join(f"{w.name} {w.start:.1f}-{w.end:.1f} s"
                                      for w in windows))
    for line in out:
        log(line)
    report.notes += out
    report.notes.append(overall(report))
    return report


def overall(report: Report) -> str:
    """``OVERALL: PASS`` when every target was met (NO DATA is not a pass), else FAIL."""
    met = all(m is True for _, m in report.targets)
    return f"OVERALL: {'PASS' if met else 'FAIL'}"


def table(report: Report) -> str:
    """The report's figures, then one PASS / FAIL / NO DATA line per target and overall."""
    lines = [report.table().split("\nTargets:")[0].rstrip(), "", "Targets:"]
    lines += [f"- {verdict(met):7s} {text}" for text, met in report.targets]
    lines.append(overall(report))
    return "\n".join(lines)


def run(quick: bool = False, duration: float | None = None) -> Report:
    return soak(duration or (QUICK_DURATION if quick else DURATION))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:g} s of load")
    parser.add_argument("--duration", type=float, default=None,
                        help=f"seconds of load (default {DURATION:g})")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="build the stack in DIR (new) and keep its logs and caches")
    args = parser.parse_args()
    # Stopped (SIGTERM), it still tears its servers down: they run in their own sessions.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        report = soak(args.duration or (QUICK_DURATION if args.quick else DURATION),
                      keep=args.keep)
    except Exception:  # benchmarks never gate: say so, as the runner does, and exit 0
        traceback.print_exc()
        print("\nOVERALL: FAIL (the soak could not run: see the traceback above)")
        return
    print()
    print(table(report))
    print(f"\nwrote {report.save()}")


if __name__ == "__main__":
    main()
