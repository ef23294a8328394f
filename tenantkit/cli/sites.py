"""``tenantkit provision``, ``deprovision`` and ``sites``: the site files (``check`` is in
:mod:`.check`)."""

from __future__ import annotations

import json
from typing import Any

import click

from tenantkit.cli.group import (
    ScriptInfo,
    TenantkitFailure,
    TenantkitUsageError,
    cli,
    json_failures,
    pass_info,
)
from tenantkit.config import Settings, mask_url
from tenantkit.errors import ForumMapError
from tenantkit.sites import Site
from tenantkit.validate import is_http_url


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
@click.option("--group", metavar="GROUP",
              help="The group nginx reads the cache with (default: [cache] group): the "
                   "cache directories get it, mode 2750 (setgid), pages 0640.")
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
@click.option("--base-url", metavar="URL",
              help="The site's public base URL, e.g. https://forum.example.org ([meta] "
                   "base_url: what PunBB builds its links and checks its forms with).")
@pass_info
@json_failures
def provision_command(
    info: ScriptInfo, name: str, hosts: tuple[str, ...], backend_spec: str | None,
    upstream: str | None, db_primary: str | None, replicas: tuple[str, ...],
    table_prefix: str | None, owner: str | None, group: str | None, dry_run: bool,
    as_json: bool, print_wp_config: bool = False, debian: bool = False,
    punbb_config: bool = False, base_url: str | None = None,
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
            primaries=() if db_primary is not None else database.primaries,
            replicas=replicas or database.replicas,
            table_prefix=table_prefix if table_prefix is not None else database.table_prefix,
        )
    meta = None
    forum_map = ""
    if punbb_config or base_url is not None:
        existing = Registry.load(settings, log_errors=False).sites.get(name)
        meta = dict(existing.meta if existing else {})
        if punbb_config:
            meta["app"] = "punbb"
        if base_url is not None:
            if not is_http_url(base_url):
                raise TenantkitUsageError(f"--base-url {base_url!r}: write the URL visitors "
                                          "use, e.g. https://forum.example.org")
            meta["base_url"] = base_url.rstrip("/")
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
            "ok": True, "site": name, "path": str(result.path), "created": result.created,
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
@click.option("--yes", "-y", "yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (needs --yes).")
@pass_info
@json_failures
def deprovision_command(info: ScriptInfo, name: str, keep_cache: bool, yes: bool = False,
                        as_json: bool = False) -> None:
    """Remove site NAME: its site file first, then its cache tree. Asks first, unless --yes.

    Exit codes: 0 removed (or nothing to remove), 1 the removal failed or was declined, 2 bad
    usage."""
    from tenantkit.errors import ProvisionError
    from tenantkit.provision import deprovision
    from tenantkit.sites import validate_name

    try:
        validate_name(name)
    except ValueError as exc:
        raise TenantkitUsageError(str(exc)) from exc
    settings = info.settings
    if not yes:
        if as_json:
            raise TenantkitUsageError("--json asks no questions: add --yes to remove "
                                      f"site {name}")
        what = "its site file" + ("" if keep_cache else " and its cache tree "
                                  f"{settings.cache_dir / name}/")
        if not click.confirm(f"Remove site {name} ({what})?", default=False, err=True):
            raise TenantkitFailure(f"site {name} was not removed (answer y, or pass --yes)")
    try:
        result = deprovision(settings, name, keep_cache=keep_cache)
    except (ValueError, ProvisionError) as exc:
        raise _provision_errors(exc) from exc
    if as_json:
        click.echo(json.dumps({"ok": True, "site": name, "removed_file": result.removed_file,
                               "removed_cache": result.removed_cache,
                               "changes": list(result.changes)}, indent=2))
    else:
        click.echo(result.summary())


def _site_row(site: Any, settings: Settings) -> dict[str, Any]:
    from tenantkit.db.servers import site_servers

    servers = site_servers(site, settings)
    backend = site.backend
    return {
        "name": site.name,
        "hosts": list(site.hosts),
        "backend": {"type": backend.type, "app": backend.app,
                    "url": mask_url(backend.url) if backend.url else None,
                    "max_concurrency": backend.max_concurrency,
                    "connect_timeout": backend.connect_timeout,
                    "read_timeout": backend.read_timeout},
        "cache_root": str(site.cache_root),
        "path": str(site.path) if site.path else None,
        "database": {"primary": mask_url(str(servers.primary)),
                     "primaries": [mask_url(str(p)) for p in servers.primaries],
                     "on_primary_down": servers.on_primary_down,
                     "replicas": [mask_url(str(r)) for r in servers.replicas],
                     "own": servers.own, "table_prefix": site.database.table_prefix},
        "cache": {"enabled": site.cache.enabled, "ttl": site.cache.ttl,
                  "stale_seconds": site.cache.stale_seconds,
                  "stale_if_error": site.cache.stale_if_error, "rewarm": site.cache.rewarm,
                  "policy": site.cache.policy},
        "meta": dict(site.meta),
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
            "sites": [_site_row(s, info.settings) for s in registry.sites.values()],
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
