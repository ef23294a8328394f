"""``tenantkit purge``: purge a site's page cache on every node."""

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
from tenantkit.config import Settings
from tenantkit.errors import TenantkitError


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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_info
@json_failures
def purge_command(info: ScriptInfo, site: str, paths: tuple[str, ...], host: str | None,
                  tags: tuple[str, ...], purge_all: bool, as_json: bool = False) -> None:
    """Purge SITE's page cache on every node (publishes a purge event).

    Exit codes: 0 purged (or published), 1 the purge failed (nothing was published), 2 bad
    usage."""
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
            text = f"purged {site}"
        else:
            publish(event, settings=settings, fallback=False)
            text = f"published a purge of {site} over {settings.bus.transport}"
    except TenantkitError as exc:
        raise TenantkitFailure(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({
            "ok": True, "site": site, "transport": settings.bus.transport,
            "published": settings.bus.transport != "local", "event": event.id,
            "paths": list(paths), "host": host, "tags": list(tags), "all": purge_all,
        }, indent=2))
    else:
        click.echo(text)
