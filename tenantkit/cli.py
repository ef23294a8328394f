"""The ``tenantkit`` command.

Every command reads the settings lazily through :class:`ScriptInfo`, so ``--help`` works
even with a broken settings file, and a bad one is reported as a usage error (exit 2)::

    tenantkit --config /etc/tenantkit.toml config
    TENANTKIT_CONFIG=/etc/tenantkit.toml tenantkit config
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from tenantkit.config import Settings, mask_url
from tenantkit.errors import ConfigError, ForumMapError, TenantkitError
from tenantkit.sites import Site

__all__ = ["ScriptInfo", "TenantkitUsageError", "cli", "main"]


class TenantkitUsageError(click.UsageError):
    """Bad arguments or settings: exit code 2, with the message saying what to fix."""


class TenantkitFailure(click.ClickException):
    """The command was right but the work failed: exit code 1."""

    exit_code = 1


class ScriptInfo:
    """Carries ``--config`` and loads :class:`Settings` on first use."""

    def __init__(self, config: str | None = None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings.load(self.config)
            except ConfigError as exc:
                raise TenantkitUsageError(str(exc)) from exc
        return self._settings


pass_info = click.make_pass_decorator(ScriptInfo, ensure=True)


@click.group(
    context_settings={"auto_envvar_prefix": "TENANTKIT", "help_option_names": ["-h", "--help"]}
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    envvar="TENANTKIT_CONFIG",
    help="Settings file (default: ./tenantkit.toml when present, else the embedded defaults).",
)
@click.version_option(package_name="tenantkit")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Host many sites from one copy of a web stack."""
    ctx.obj = ScriptInfo(config)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@cli.command("config")
@pass_info
def show_config(info: ScriptInfo) -> None:
    """Print the effective settings as JSON (passwords and tokens masked)."""
    settings = info.settings
    data = _plain(asdict(settings))
    data["database"]["primary"] = mask_url(settings.database.primary)
    data["database"]["replicas"] = [mask_url(u) for u in settings.database.replicas]
    data["bus"]["redis_url"] = mask_url(settings.bus.redis_url)
    for key in ("admin_token", "secret_key"):
        if data["web"][key]:
            data["web"][key] = "********"
    click.echo(json.dumps(data, indent=2, sort_keys=True))


# --- punbb-config (issue 9) -------------------------------------------------------------------

def _punbb_map_text(settings: Settings, site: Site) -> str:
    """The forum map of every forum, with *site* as it is about to be provisioned."""
    from tenantkit.export.punbb import build_forum_map, render_forum_map
    from tenantkit.registry import Registry

    sites = dict(Registry.load(settings).sites)
    sites[site.name] = site
    try:
        forum_map = build_forum_map(sites.values(), settings)
    except ForumMapError as exc:
        raise TenantkitUsageError(str(exc)) from exc
    return render_forum_map(forum_map)


@cli.command("punbb-config")
@click.argument("sites", nargs=-1)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the map to this file (atomically, mode 0640) instead of stdout; "
                   "PunBB reads <punbb>/tenantkit_forums.php, or the file named by "
                   "TENANTKIT_PUNBB_MAP.")
@click.option("--events-helper", type=click.Path(dir_okay=False),
              help="Path of contrib/tenantkit-events.php as the web server sees it "
                   "(default: <punbb>/include/tenantkit-events.php).")
@click.option("--create-dirs", is_flag=True,
              help="Create each forum's cache_dir/<site>/app/ and .purge/ when missing.")
@pass_info
def punbb_config(info: ScriptInfo, sites: tuple[str, ...], output: Path | None,
                 events_helper: str | None, create_dirs: bool) -> None:
    """Print the PunBB forum map for contrib/punbb.diff.

    Covers every site whose file has [meta] app = "punbb", or only the SITES named. The map
    holds database passwords: keep it readable by the web server only.
    """
    from tenantkit.export.punbb import build_forum_map, render_forum_map, write_forum_map
    from tenantkit.registry import Registry

    registry = Registry.load(info.settings)
    for path, error in sorted(registry.errors.items()):
        click.echo(f"warning: {path}: {error} (left out of the forum map)", err=True)
    try:
        forum_map = build_forum_map(registry.sites.values(), info.settings,
                                    names=list(sites) or None, events_helper=events_helper)
    except ForumMapError as exc:
        raise TenantkitUsageError(str(exc)) from exc
    for item in forum_map.skipped:
        click.echo(f"warning: regex host pattern left out of the forum map: {item}", err=True)
    if not forum_map.forums:
        click.echo(f'warning: no site in {info.settings.sites_dir} has [meta] app = "punbb"; '
                   "the map serves no forum", err=True)
    if create_dirs:
        for forum in forum_map.forums.values():
            for directory in (forum.cache_dir, forum.purge_dir):
                try:
                    Path(directory).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise TenantkitFailure(f"cannot create {directory}: {exc.strerror} "
                                           "(check the permissions of cache_dir)") from exc
    text = render_forum_map(forum_map)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        write_forum_map(output, text)
    except OSError as exc:
        raise TenantkitFailure(f"cannot write {output}: {exc.strerror} (check that its "
                               "directory exists and is writable)") from exc
    click.echo(f"wrote {output}: {len(forum_map.forums)} forum(s)", err=True)


# --- sites: provision, deprovision, sites, check (issue 3) ----------------------------------


def _provision_errors(exc: Exception) -> click.ClickException:
    """Bad arguments (ValueError subclasses) exit 2; failures exit 1."""
    if isinstance(exc, ValueError):
        return TenantkitUsageError(str(exc))
    return TenantkitFailure(str(exc))


@cli.command("provision")
@click.argument("name")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="A host pattern (repeat for several): blog.example.org, *.example.org, "
                   ".example.org, www.example.*, ~regex. Replaces the site's hosts.")
@click.option("--backend", "backend_spec", metavar="wsgi:MODULE:ATTR",
              help="Serve with an in-process WSGI app (or a factory called with the Site).")
@click.option("--upstream", metavar="URL", help="Proxy to an HTTP upstream, e.g. "
              "http://127.0.0.1:8080.")
@click.option("--database", "db_primary", metavar="URL",
              help="The site's primary database URL (default: the global settings).")
@click.option("--replica", "replicas", multiple=True, metavar="URL",
              help="A replica URL for reads (repeat for several).")
@click.option("--table-prefix", metavar="PREFIX", help="Table name prefix, e.g. wp_.")
@click.option("--owner", metavar="USER", help="Owner of the cache directories.")
@click.option("--group", metavar="GROUP", help="Group of the cache directories.")
@click.option("--dry-run", is_flag=True,
              help="Validate and show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--print-wp-config", "print_wp_config", is_flag=True,
              help="Then print the wp-config.php block for contrib/wp-db-router.php "
                   "(the summary goes to stderr).")
@click.option("--debian", is_flag=True,
              help="With --print-wp-config: print a whole /etc/wordpress/config-<host>.php "
                   "for Debian's packaged WordPress.")
@click.option("--print-punbb-config", "punbb_config", is_flag=True,
              help='Mark the site as a PunBB forum ([meta] app = "punbb") and print the '
                   "forum map of every forum (see punbb-config) on stdout; the summary goes "
                   "to stderr.")
@pass_info
def provision_command(
    info: ScriptInfo, name: str, hosts: tuple[str, ...], backend_spec: str | None,
    upstream: str | None, db_primary: str | None, replicas: tuple[str, ...],
    table_prefix: str | None, owner: str | None, group: str | None, dry_run: bool,
    as_json: bool, print_wp_config: bool = False, debian: bool = False,
    punbb_config: bool = False,
) -> None:
    """Create or update site NAME: validate, create its cache tree, then write its site file.

    Idempotent: a second identical run changes nothing and says so. Options left out keep
    the site's current values.
    """
    from dataclasses import replace

    from tenantkit.errors import ProvisionError
    from tenantkit.provision import provision
    from tenantkit.registry import Registry

    if backend_spec and upstream:
        raise TenantkitUsageError("give either --backend or --upstream, not both")
    if debian and not print_wp_config:
        raise TenantkitUsageError("--debian only goes with --print-wp-config")
    if print_wp_config and as_json:
        raise TenantkitUsageError("give either --json or --print-wp-config, not both")
    if punbb_config and (print_wp_config or as_json):
        raise TenantkitUsageError("--print-punbb-config goes alone: not with --json or "
                                  "--print-wp-config")
    if backend_spec and not backend_spec.startswith("wsgi:"):
        raise TenantkitUsageError(
            f"--backend {backend_spec!r}: write wsgi:module:attr (or use --upstream URL)"
        )
    settings = info.settings
    database = None
    if db_primary is not None or replicas or table_prefix is not None:
        current = Registry.load(settings, log_errors=False).sites.get(name)
        database = current.database if current else None
        from tenantkit.sites import SiteDatabase

        database = database or SiteDatabase()
        database = replace(
            database,
            primary=db_primary if db_primary is not None else database.primary,
            replicas=replicas or database.replicas,
            table_prefix=table_prefix if table_prefix is not None else database.table_prefix,
        )
    meta = None
    forum_map = ""
    if punbb_config:
        existing = Registry.load(settings, log_errors=False).sites.get(name)
        meta = {**(existing.meta if existing else {}), "app": "punbb"}
    try:
        if punbb_config:  # a forum PunBB cannot use is refused before anything is written
            planned = provision(
                settings, name, list(hosts) if hosts else None,
                backend=backend_spec or upstream, database=database, meta=meta,
                owner=owner, group=group, dry_run=True,
            )
            forum_map = _punbb_map_text(settings, planned.site)
        result = provision(
            settings, name, list(hosts) if hosts else None,
            backend=backend_spec or upstream, database=database, meta=meta,
            owner=owner, group=group, dry_run=dry_run,
        )
    except (ValueError, ProvisionError) as exc:
        raise _provision_errors(exc) from exc
    if print_wp_config:
        from tenantkit.errors import WpConfigError
        from tenantkit.export.wordpress import render_wp_config

        try:
            text = render_wp_config(result.site, settings, debian=debian)
        except WpConfigError as exc:
            raise TenantkitUsageError(f"site {name}: {exc}") from exc
        click.echo(result.summary(), err=True)
        click.echo(text, nl=False)
        return
    if as_json:
        click.echo(json.dumps({
            "site": name, "path": str(result.path), "created": result.created,
            "changed": result.changed, "dry_run": result.dry_run,
            "changes": list(result.changes), "hosts": list(result.site.hosts),
        }, indent=2), err=punbb_config)
    else:
        click.echo(result.summary(), err=punbb_config)
    if punbb_config:
        click.echo(forum_map, nl=False)


@cli.command("deprovision")
@click.argument("name")
@click.option("--keep-cache", is_flag=True, help="Keep the cache tree; remove only the site file.")
@pass_info
def deprovision_command(info: ScriptInfo, name: str, keep_cache: bool) -> None:
    """Remove site NAME: its site file first, then its cache tree."""
    from tenantkit.errors import ProvisionError
    from tenantkit.provision import deprovision

    try:
        result = deprovision(info.settings, name, keep_cache=keep_cache)
    except (ValueError, ProvisionError) as exc:
        raise _provision_errors(exc) from exc
    click.echo(result.summary())


def _site_row(site: Any) -> dict[str, Any]:
    backend = site.backend
    return {
        "name": site.name,
        "hosts": list(site.hosts),
        "backend": {"type": backend.type, "app": backend.app,
                    "url": mask_url(backend.url) if backend.url else None},
        "cache_root": str(site.cache_root),
        "path": str(site.path) if site.path else None,
    }


@cli.command("sites")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_info
def sites_command(info: ScriptInfo, as_json: bool) -> None:
    """List the sites and their hosts (broken site files are reported on stderr)."""
    from tenantkit.registry import Registry

    registry = Registry.load(info.settings, log_errors=False)
    if as_json:
        click.echo(json.dumps({
            "sites": [_site_row(s) for s in registry.sites.values()],
            "errors": {str(p): m for p, m in registry.errors.items()},
            "conflicts": [str(c) for c in registry.conflicts],
        }, indent=2))
        return
    rows = [(s.name, s.backend.type, ", ".join(s.hosts)) for s in registry.sites.values()]
    width = max([len("SITE")] + [len(r[0]) for r in rows])
    click.echo(f"{'SITE':<{width}}  {'BACKEND':<7}  HOSTS")
    for site_name, kind, hosts in rows:
        click.echo(f"{site_name:<{width}}  {kind:<7}  {hosts}")
    for message in [*registry.errors.values(), *map(str, registry.conflicts)]:
        click.echo(f"warning: {message}", err=True)


@cli.command("check")
@pass_info
def check_command(info: ScriptInfo) -> None:
    """Validate the settings and every site file; print every error; exit 1 if any."""
    from tenantkit.registry import Registry

    try:
        settings = info.settings
    except TenantkitUsageError as exc:
        raise TenantkitFailure(exc.message) from exc
    registry = Registry.load(settings, log_errors=False)
    problems = [*registry.errors.values(), *map(str, registry.conflicts)]
    if not settings.sites_dir.is_dir():
        click.echo(f"note: sites directory {settings.sites_dir} does not exist (no sites)",
                   err=True)
    for message in problems:
        click.echo(f"error: {message}", err=True)
    if problems:
        raise TenantkitFailure(f"{len(problems)} problem(s) found")
    click.echo(f"ok: settings and {len(registry.sites)} site file(s) are valid")


# --- purge and invalidator (issue 6) -------------------------------------------------------


def _load_registry(settings: Settings) -> Any:
    from tenantkit.registry import Registry

    return Registry.load(settings)


@cli.command("purge")
@click.argument("site")
@click.option("--path", "paths", multiple=True, metavar="PATH",
              help="A URL path to purge, with every query string (repeatable).")
@click.option("--host", default=None, help="Only this host's pages for --path (default: all).")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Purge every page with this tag: post:42, home, feed, ... (repeatable).")
@click.option("--all", "purge_all", is_flag=True, help="Flush the whole site.")
@pass_info
def purge_command(info: ScriptInfo, site: str, paths: tuple[str, ...], host: str | None,
                  tags: tuple[str, ...], purge_all: bool) -> None:
    """Purge SITE's page cache on every node (publishes a purge event)."""
    from tenantkit.cache.caches import site_page_cache
    from tenantkit.cache.events import Purge
    from tenantkit.cache.publish import publish
    from tenantkit.cache.purge import action_for, purge
    from tenantkit.errors import InvalidHost, MalformedEvent
    from tenantkit.hosts import normalize_host

    settings = info.settings
    if not (paths or tags or purge_all):
        raise TenantkitUsageError("say what to purge: --path /some/url/, --tag post:42 or --all")
    for path in paths:
        if not path.startswith("/"):
            raise TenantkitUsageError(f"--path {path!r}: a URL path starts with '/' "
                                      f"(write --path /{path})")
    if host is not None:
        if not paths:
            raise TenantkitUsageError("--host only applies to --path")
        try:
            host = normalize_host(host)
        except InvalidHost as exc:
            raise TenantkitUsageError(f"--host: {exc}") from exc
    registry = _load_registry(settings)
    if site not in registry.sites:
        known = ", ".join(sorted(registry.sites)) or f"none in {settings.sites_dir}"
        raise TenantkitUsageError(f"unknown site {site!r} (known sites: {known})")
    try:
        event = Purge(site, paths=paths, tags=tags, host=host, all=purge_all, origin="cli")
    except MalformedEvent as exc:
        raise TenantkitUsageError(str(exc)) from exc
    try:
        if settings.bus.transport == "local":  # no bus to other nodes: purge here and now
            chosen = registry.sites[site]
            purge(site_page_cache(chosen), chosen, action_for(chosen, event))
            click.echo(f"purged {site}")
        else:
            publish(event, settings=settings, fallback=False)
            click.echo(f"published a purge of {site} over {settings.bus.transport}")
    except TenantkitError as exc:
        raise TenantkitFailure(str(exc)) from exc


@cli.command("invalidator")
@click.option("--node", default=None, help="This node's name (default: [bus] node, else the "
              "host name); one Redis consumer group per node.")
@click.option("--transport", type=click.Choice(["local", "redis", "pubsub", "files"]),
              default=None, help="Override [bus] transport.")
@click.option("--source", type=click.Choice(["bus", "binlog"]), default="bus",
              show_default=True, help="bus: events over [bus]; binlog: also read this node's "
              "replica binlog (see the README, \"Invalidation sources\").")
@click.option("--binlog-url", default=None, metavar="URL", help="With --source binlog: the "
              "replica to read, as a user with REPLICATION SLAVE (default: the sites' first "
              "replica URL).")
@pass_info
def invalidator_command(info: ScriptInfo, node: str | None, transport: str | None,
                        source: str = "bus", binlog_url: str | None = None) -> None:
    """Consume invalidation events on this node and purge the page caches (until stopped)."""
    import signal

    from tenantkit.cache.invalidator import Invalidator
    from tenantkit.cache.transports import make_transport
    from tenantkit.watch import SiteWatcher

    settings = info.settings
    registry = _load_registry(settings)
    try:
        chosen = make_transport(settings, transport)
    except TenantkitError as exc:
        raise TenantkitUsageError(str(exc)) from exc
    invalidator = Invalidator(settings, registry, transport=chosen, node=node)

    def stop(signum: int, frame: object) -> None:
        invalidator.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"invalidator for {len(registry.sites)} site(s) on node {invalidator.node} "
               f"over {chosen.name}", err=True)
    binlogs: list[Any] = []
    if source == "binlog":
        from tenantkit.cache.sources.binlog import BinlogSource, replica_urls

        urls = [binlog_url] if binlog_url else replica_urls(settings, registry.sites)
        if not urls:
            raise TenantkitUsageError('--source binlog: no site has a replica and [meta] '
                                      'invalidation (write invalidation = "wordpress")')
        binlogs = [BinlogSource(settings, registry, url=url, caches=invalidator.caches,
                                node=invalidator.node) for url in urls]
    try:
        with SiteWatcher(registry):
            for binlog in binlogs:
                binlog.start()
            invalidator.run_forever()
    finally:
        for binlog in binlogs:
            binlog.stop()
        chosen.close()


# --- issue 7: the shim: serve, nginx-config, demo ------------------------------------------


@cli.command("serve")
@click.option("--bind", default="127.0.0.1:8000", show_default=True,
              help="Address to listen on, HOST:PORT.")
@click.option("--workers", type=click.IntRange(1, 256), default=2, show_default=True,
              help="gunicorn worker processes (ignored without gunicorn).")
@click.option("--server", type=click.Choice(["auto", "gunicorn", "werkzeug"]), default="auto",
              show_default=True,
              help="auto: gunicorn when installed (pip install 'tenantkit[server]'), "
                   "else werkzeug's threaded server.")
@pass_info
def serve_command(info: ScriptInfo, bind: str, workers: int, server: str) -> None:
    """Serve every site, dispatching by Host, with the page cache and the admin endpoints."""
    from tenantkit.web.server import gunicorn_available, parse_bind, serve

    try:
        parse_bind(bind)
    except ValueError as exc:
        raise TenantkitUsageError(str(exc)) from exc
    if server == "gunicorn" and not gunicorn_available():
        raise TenantkitUsageError("--server gunicorn: gunicorn is not installed "
                                  "(pip install 'tenantkit[server]')")
    settings = info.settings
    use = None if server == "auto" else server == "gunicorn"
    try:
        serve(settings, bind=bind, workers=workers, use_gunicorn=use)
    except OSError as exc:
        raise TenantkitFailure(f"cannot serve on {bind}: {exc.strerror or exc}") from exc


@cli.command("nginx-config")
@click.option("--listen", default="80", show_default=True,
              help="nginx listen directive value (port, or address:port).")
@click.option("--upstream", default="127.0.0.1:8000", show_default=True,
              help="Where `tenantkit serve` listens.")
@pass_info
def nginx_config_command(info: ScriptInfo, listen: str, upstream: str) -> None:
    """Print a catch-all nginx server block: page-cache hits from disk, the rest to tenantkit."""
    from tenantkit.export.nginx import render_config

    try:
        click.echo(render_config(info.settings, listen=listen, upstream=upstream), nl=False)
    except ValueError as exc:
        raise TenantkitUsageError(str(exc)) from exc


@cli.command("demo")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Port on 127.0.0.1.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("tenantkit-demo"), show_default=True,
              help="Where the demo keeps its settings, sites, caches and databases.")
def demo_command(port: int, directory: Path) -> None:
    """Two demo blogs on one shim: watch the page cache fill and purge. Ctrl-C stops it."""
    from tenantkit.demo.run import run_demo

    try:
        run_demo(directory, port=port)
    except OSError as exc:
        raise TenantkitFailure(f"demo: {exc.strerror or exc} (is port {port} in use? "
                               "try --port)") from exc


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the click group, mapping our errors to exit codes."""
    try:
        cli.main(args=argv, prog_name="tenantkit", standalone_mode=True)
    except TenantkitError as exc:  # a library error that escaped a command
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
