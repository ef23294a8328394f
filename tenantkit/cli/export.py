"""``tenantkit config``, ``punbb-config`` and ``nginx-config``: what tenantkit writes for other
programs (and for the operator), printed or written to a file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from tenantkit.cli.group import ScriptInfo, TenantkitFailure, TenantkitUsageError, cli, pass_info
from tenantkit.config import mask_url
from tenantkit.errors import ForumMapError


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
