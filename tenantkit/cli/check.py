"""``tenantkit check``: find the mistakes operators make, all of them at once.

::

    tenantkit check                   # settings, site files, backends, servers, cache modes
    tenantkit check --offline         # no connection to databases, Redis or upstreams
    tenantkit check --json            # {"ok": ..., "problems": [{"level", "where", "message"}]}
    tenantkit check --purge blog      # self-test: a probe page, a purge over the bus, timed

Errors make the exit code 1; warnings (what works today but is likely wrong) do not. Bad
arguments exit 2.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from tenantkit.cache.pagefile import BODY, PRIVATE_BODY, PageFiles
from tenantkit.cache.tags import is_untagged
from tenantkit.cli.each import reveal
from tenantkit.cli.group import ScriptInfo, TenantkitFailure, TenantkitUsageError, cli, pass_info
from tenantkit.config import Settings, did_you_mean, mask_url, settings_env_vars, settings_problems
from tenantkit.sites import Site

__all__ = ["Problem", "check_command", "cli_env_vars"]


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning"
    where: str
    message: str


# -- settings and environment -----------------------------------------------------------------

def cli_env_vars(group: click.Group) -> list[str]:
    """The ``TENANTKIT_<COMMAND>_<OPTION>`` variables click reads (auto_envvar_prefix)."""
    names = []
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                names.append(f"TENANTKIT_{name.upper()}_{param.name.upper()}".replace("-", "_"))
    return names


def _environment(env: dict[str, str]) -> Iterator[Problem]:
    known = set(settings_env_vars()) | set(cli_env_vars(cli))
    for var in sorted(env):
        if var.startswith("TENANTKIT_") and var not in known:
            yield Problem("error", f"environment variable {var}",
                          f"not a tenantkit setting, ignored{did_you_mean(var, known)}")


# -- site files ---------------------------------------------------------------------------------

def _site_files(settings: Settings) -> Iterator[Problem]:
    from tenantkit.sites import site_file_problems

    try:
        entries = sorted(os.scandir(settings.sites_dir), key=lambda e: e.name)
    except FileNotFoundError:
        yield Problem("warning", str(settings.sites_dir),
                      "the sites directory does not exist (no sites are served; create it "
                      "or set sites_dir)")
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(".") or entry.name.endswith("~"):
            continue
        if not entry.name.endswith(".toml"):
            if entry.is_file():
                stem, _, suffix = entry.name.rpartition(".")
                looks = did_you_mean(suffix, ["toml"]) if stem else ""
                yield Problem("error" if looks else "warning", str(path),
                              f"ignored: only *.toml files are site files (rename it to "
                              f"{stem or entry.name}.toml if it is one)")
            continue
        prefix = f"site file {path}: "
        for message in site_file_problems(path, settings):
            yield Problem("error", str(path), message.removeprefix(prefix))


# -- backends, databases, Redis --------------------------------------------------------------

def _backend(site: Site, settings: Settings, online: bool) -> Iterator[Problem]:
    where = f"site {site.name}"
    if site.backend.type == "wsgi":
        from tenantkit.web.backends import load_wsgi_app

        try:
            load_wsgi_app(site)
        except Exception as exc:
            yield Problem("error", where, f"backend does not load: {exc}")
        return
    if not online or not site.backend.url:
        return
    import urllib3

    timeout = settings.database.connect_timeout
    try:
        with urllib3.PoolManager(retries=False, timeout=timeout) as http:
            http.request("HEAD", site.backend.url, headers={
                "Host": site.hosts[0].lstrip("*.~") if site.hosts else "localhost"})
    except urllib3.exceptions.HTTPError as exc:
        yield Problem("error", where, f"upstream {mask_url(site.backend.url)} does not "
                      f"answer: {str(exc).splitlines()[0][:200]} (is it running?)")


def _database(url: str, what: str, timeout: float) -> Iterator[Problem]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from tenantkit.db.servers import connect_args

    shown = mask_url(url)
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args(url, timeout))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        first = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:200]
        yield Problem("error", f"{what} {shown}", f"does not answer: {first}")


def _candidates(primaries: tuple[str, ...], label: str, timeout: float) -> Iterator[Problem]:
    """Primary candidates: exactly one must be writable (a split brain, or none, is an error)."""
    from tenantkit.db.primaries import PrimaryFinder

    finder = PrimaryFinder([reveal(p) for p in primaries], connect_timeout=timeout)
    try:
        state = finder.check()
    finally:
        finder.close()
    where = f"{label}primaries"
    if state.split_brain:
        yield Problem("error", where, f"split brain: {' and '.join(state.writable)} are all "
                      "writable; writes are refused until exactly one is (SET GLOBAL "
                      "read_only = 1 on the others)")
    elif state.primary is None:
        yield Problem("error", where, "no candidate is writable: writes fail until one is "
                      "promoted (SET GLOBAL read_only = 0 on the new primary)")


def _binlog_replicas(settings: Settings, sites: list[Site]) -> Iterator[Problem]:
    """The replicas ``invalidator --source binlog`` would read (sites with ``[meta]
    invalidation``) against the binlog source's needs
    (:data:`~tenantkit.cache.sources.binlog.REPLICA_NEEDS`)."""
    from tenantkit.cache.sources.binlog import check_replica, replica_urls
    from tenantkit.errors import BusError

    for url in replica_urls(settings, {site.name: site for site in sites}):
        if not url.startswith("mysql"):
            continue
        try:
            problems = check_replica(reveal(url))
        except BusError:  # _databases says it does not answer
            continue
        for message in problems:
            yield Problem("error", f"binlog source: replica {mask_url(url)}", message)


def _databases(settings: Settings, sites: list[Site]) -> Iterator[Problem]:
    from tenantkit.db.servers import site_servers

    seen: set[str] = set()
    for site in [None, *sites]:
        servers = site_servers(site, settings)
        if site is not None and not servers.own:
            continue
        label = f"site {site.name}: " if site is not None else ""
        if len(servers.primaries) > 1:
            yield from _candidates(servers.primaries, label, settings.database.connect_timeout)
        for url, replica in [*((reveal(p), False) for p in servers.primaries),
                             *((reveal(r), True) for r in servers.replicas)]:
            if url in seen:
                continue
            seen.add(url)
            yield from _database(url, f"{label}{'replica' if replica else 'primary'}",
                                 settings.database.connect_timeout)


def _redis(settings: Settings) -> Iterator[Problem]:
    if settings.bus.transport != "redis":
        return
    import redis

    timeout = settings.database.connect_timeout
    try:
        client = redis.Redis.from_url(settings.bus.redis_url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        yield Problem("error", f"[bus] redis_url {mask_url(settings.bus.redis_url)}",
                      f"Redis does not answer: {str(exc)[:200]}")


# -- cache trees nginx must read -------------------------------------------------------------

def _identity(user: str) -> tuple[int, set[int]] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return entry.pw_uid, groups


def _allows(st: os.stat_result, who: tuple[int, set[int]], bits: int) -> bool:
    """Whether the user *who* has every permission in *bits* (a mask of R and X, in the
    "others" position) on a file with *st*."""
    uid, gids = who
    if uid == 0:
        return True
    if st.st_uid == uid:
        return st.st_mode & (bits << 6) == bits << 6
    if st.st_gid in gids:
        return st.st_mode & (bits << 3) == bits << 3
    return st.st_mode & bits == bits


def _mode_text(path: Path, st: os.stat_result) -> str:
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{path} is {stat.S_IMODE(st.st_mode):04o} {owner}:{group}"


def _cache_tree(site: Site, settings: Settings, user: str) -> Iterator[Problem]:
    who = _identity(user)
    if who is None:
        return
    where = f"site {site.name}: cache tree"
    group = _nginx_group(user)
    fix = (f"run tenantkit provision {site.name} --group {group} (or set [cache] group = "
           f'"{group}" and run tenantkit provision {site.name}), or chmod -R g+rX (with that '
           "group) / o+rX the cache tree")
    chain = [Path(settings.cache_dir), site.cache_root, site.pages_dir]
    current = site.pages_dir / "current"
    with contextlib.suppress(RuntimeError, OSError):
        chain.append(current.resolve(strict=True))
    for directory in chain:
        try:
            st = directory.stat()
        except FileNotFoundError:  # made when the first page is stored
            return
        if not _allows(st, who, stat.S_IXOTH):
            shared = directory == Path(settings.cache_dir)  # every site's: no group of one
            yield Problem("error", where, f"{_mode_text(directory, st)}: nginx ({user}) "
                          f"cannot enter it and falls through to the shim on every "
                          f"page ({f'chmod o+x {directory}' if shared else fix})")
            return
    if len(chain) < 4:
        return
    for count, file in enumerate(p for p in chain[-1].rglob("*") if p.is_file()):
        if count >= 200:
            break
        st = file.stat()
        if not _allows(st, who, stat.S_IROTH):
            yield Problem("error", where, f"{_mode_text(file, st)}: nginx ({user}) cannot "
                          f"read this page ({fix})")
            return


def _untagged(site: Site, recent: int = 50) -> Iterator[Problem]:
    """A warning when *site* is under ``policy = "targeted"`` and its most recently stored
    pages (up to *recent*) carry no tags: the app sends no X-Tenantkit-Tags, so every purge of
    the site clears those pages and a targeted purge saves nothing for them."""
    if site.cache.policy == "targeted":
        bodies: list[tuple[float, str, str]] = []
        for root, dirs, files in os.walk(site.pages_dir / "current"):
            dirs[:] = [d for d in dirs if d not in (".tags", ".purged")]
            for name in (BODY, PRIVATE_BODY):
                if name in files:
                    try:
                        bodies.append((os.stat(os.path.join(root, name)).st_mtime, root, name))
                    except FileNotFoundError:
                        continue
        untagged = 0
        newest = sorted(bodies, reverse=True)[:recent]
        for _, root, name in newest:
            sidecar = PageFiles.sidecar(root, name)
            tags = sidecar.get("tags") if sidecar is not None else None
            if isinstance(tags, list):
                untagged += is_untagged(tags)
        if untagged:
            yield Problem(
                "warning", f"site {site.name}",
                f'policy = "targeted", but {untagged} of its {len(newest)} '
                "most recent cached pages carry no tags (any purge of the site clears them); "
                "make the app send X-Tenantkit-Tags (WordPress: install "
                "contrib/tenantkit-tags.php as a must-use plugin; PunBB: apply the current "
                "contrib/punbb.diff), or use policy = \"site\"")


def _nginx_group(user: str) -> str:
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


# -- the purge self-test ----------------------------------------------------------------------

class _StreamNodes:
    """Every node's consumer group on the Redis stream, watched for one entry: a node has
    dropped the probe once its group was given the entry and acknowledged it (its
    invalidator acknowledges after the purge)."""

    def __init__(self, settings: Settings) -> None:
        from tenantkit.cache.transports.redis_streams import redis_client

        self.client = redis_client(settings.bus.redis_url)
        self.stream = settings.bus.stream
        self.entry: str | None = None
        self._entry_key = (0, 0)

    def find(self, event_id: str) -> bool:
        """Find the stream entry carrying the event *event_id* (just published)."""
        entries: Any = self.client.xrevrange(self.stream, count=200) or []
        for entry_id, fields in entries:
            if event_id in _text((fields or {}).get(b"event", b"")):
                self.entry = _text(entry_id)
                self._entry_key = _entry_key(self.entry)
                return True
        return False

    def _groups(self) -> dict[str, dict[str, Any]]:
        import redis

        try:
            return {_text(g["name"]): g for g in self.client.xinfo_groups(self.stream)}
        except redis.ResponseError:  # no stream: no node has ever joined
            return {}

    def groups(self) -> list[str]:
        return sorted(self._groups())

    def dropped(self, group: str) -> bool:
        assert self.entry is not None
        info = self._groups().get(group)
        if info is None or _entry_key(_text(info.get("last-delivered-id"))) < self._entry_key:
            return False
        pending = self.client.xpending_range(self.stream, group, min=self.entry,
                                             max=self.entry, count=1)
        return not pending

    def close(self) -> None:
        self.client.close()


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


def _node_name(group: str) -> str:
    return group.removeprefix("tenantkit:")


def _purge_self_test(settings: Settings, site: Site, timeout: float) -> dict[str, Any]:
    """Store a probe page in *site*'s cache, publish a purge of it through the configured
    transport, and time how long until this node's cache dropped it and, over Redis, until
    every node (every consumer group of the stream) acknowledged the purge."""
    from tenantkit.cache.caches import site_page_cache
    from tenantkit.cache.events import Purge
    from tenantkit.cache.publish import publish
    from tenantkit.cache.transports.base import node_name

    cache = site_page_cache(site)
    host = next((h for h in site.hosts if not h.startswith(("*", ".", "~"))), "probe.invalid")
    path = f"/_tenantkit-probe/{os.getpid()}-{time.monotonic_ns()}/"
    transport = settings.bus.transport
    this_node = node_name(settings)
    if not cache.put(host, path, b"tenantkit check probe\n", ttl=max(int(timeout) + 60, 60)):
        return {"stored": False, "purged": False, "transport": transport, "seconds": None,
                "nodes": []}
    event = Purge(site.name, paths=(path,), host=host, origin="check")
    nodes: dict[str, float | None] = {}
    streams = _StreamNodes(settings) if transport == "redis" else None
    try:
        started = time.monotonic()
        if transport == "local":
            from tenantkit.cache.purge import action_for, purge

            purge(cache, site, action_for(site, event))
        else:
            publish(event, settings=settings, fallback=False)
        if streams is not None and streams.find(event.id):
            nodes = dict.fromkeys(streams.groups())
        here: float | None = None
        while True:
            elapsed = round(time.monotonic() - started, 3)
            if here is None:
                page = cache.get(host, path)
                if page is None or page.stale:  # a purged page is kept to be served stale
                    here = elapsed
            for group, seconds in nodes.items():
                if seconds is None and streams is not None and streams.dropped(group):
                    nodes[group] = elapsed
            done = here is not None and all(s is not None for s in nodes.values())
            if done or time.monotonic() - started >= timeout:
                break
            time.sleep(0.05)
    finally:
        if streams is not None:
            streams.close()
    report_nodes = [{"node": _node_name(g), "purged": s is not None, "seconds": s}
                    for g, s in nodes.items()]
    if not report_nodes:  # local or files transport: only this node can be seen
        report_nodes = [{"node": this_node, "purged": here is not None, "seconds": here}]
    return {"stored": True, "purged": here is not None and all(n["purged"] for n in report_nodes),
            "transport": transport, "seconds": here, "node": this_node, "nodes": report_nodes}


def _purge_problems(site: str, report: dict[str, Any], timeout: float) -> list[Problem]:
    where = f"site {site}: purge self-test"
    if not report["stored"]:
        return [Problem("error", where, "the probe page could not be stored (is the cache "
                                        "directory writable?)")]
    found = []
    if report["seconds"] is None:
        found.append(Problem("error", where, f"the probe page was not purged within "
                                             f"{timeout:g}s on this node ({report['node']}): is "
                                             "the invalidator running on this node?"))
    for node in report["nodes"]:
        if not node["purged"] and node["node"] != report["node"]:
            found.append(Problem("error", where, f"node {node['node']} did not acknowledge the "
                                                 f"purge within {timeout:g}s: is its "
                                                 "invalidator running? (a node that is gone for "
                                                 "good: remove its consumer group, XGROUP "
                                                 f"DESTROY <stream> tenantkit:{node['node']})"))
        elif not node["purged"] and report["seconds"] is not None:
            found.append(Problem("error", where, f"this node ({node['node']}) dropped the page "
                                                 "but its invalidator did not acknowledge the "
                                                 f"purge within {timeout:g}s"))
    return found


# -- the command ------------------------------------------------------------------------------

@cli.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--offline", is_flag=True,
              help="Do not connect to databases, Redis or upstreams.")
@click.option("--nginx-user", default="www-data", show_default=True,
              help="The user nginx reads the page caches as (skipped when it does not exist).")
@click.option("--purge", "purge_site", metavar="SITE",
              help="Self-test: store a probe page for SITE, publish a purge through the "
                   "configured transport and report whether and how fast it was dropped.")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True,
              help="How long --purge waits for the probe page to go.")
@pass_info
def check_command(info: ScriptInfo, as_json: bool, offline: bool, nginx_user: str,
                  purge_site: str | None, timeout: float) -> None:
    """Check the settings, every site file, backends, servers and cache trees; report every
    problem. Exit 1 when there are errors (warnings alone exit 0)."""
    from tenantkit.registry import Registry

    problems = [Problem("error", "settings", m) for m in settings_problems(info.config)]
    problems += _environment(dict(os.environ))
    settings: Settings | None = None
    if not any(p.where == "settings" for p in problems):
        try:
            settings = info.settings
        except TenantkitUsageError as exc:  # pragma: no cover - settings_problems saw it
            problems.append(Problem("error", "settings", exc.message))
    sites: list[Site] = []
    report: dict[str, Any] = {}
    if settings is not None:
        problems += _site_files(settings)
        registry = Registry.load(settings, log_errors=False)
        problems += [Problem("error", "sites", str(c)) for c in registry.conflicts]
        sites = sorted(registry.sites.values(), key=lambda s: s.name)
        for site in sites:
            problems += _backend(site, settings, not offline)
            problems += _cache_tree(site, settings, nginx_user)
            problems += _untagged(site)
        if not offline:
            problems += _databases(settings, sites)
            problems += _binlog_replicas(settings, sites)
            problems += _redis(settings)
        if purge_site is not None:
            if purge_site not in registry.sites:
                raise TenantkitUsageError(f"--purge {purge_site!r}: no such site (known: "
                                          f"{', '.join(s.name for s in sites) or 'none'})")
            report = _purge_self_test(settings, registry.sites[purge_site], timeout)
            problems += _purge_problems(purge_site, report, timeout)
    errors = [p for p in problems if p.level == "error"]
    if as_json:
        click.echo(json.dumps({"ok": not errors, "sites": len(sites),
                               "problems": [asdict(p) for p in problems],
                               **({"purge": report} if report else {})}, indent=2))
    else:
        for p in problems:
            click.echo(f"{p.level}: {p.where}: {p.message}", err=True)
        for node in report.get("nodes", []):
            if node["purged"]:
                click.echo(f"purge self-test: node {node['node']} dropped {purge_site}'s probe "
                           f"page over {report['transport']} in {node['seconds']:.3f}s")
    if errors:
        raise TenantkitFailure(f"{len(errors)} problem(s) found")
    if not as_json:
        click.echo(f"ok: settings and {len(sites)} site file(s) are valid"
                   + (f" ({len(problems)} warning(s))" if problems else ""))
