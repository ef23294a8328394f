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
    from tenantkit.punbb import build_forum_map, render_forum_map, write_forum_map
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the click group, mapping our errors to exit codes."""
    try:
        cli.main(args=argv, prog_name="tenantkit", standalone_mode=True)
    except TenantkitError as exc:  # a library error that escaped a command
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
