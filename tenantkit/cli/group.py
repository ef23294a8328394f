"""The ``tenantkit`` click group, its lazily loaded context object (:class:`ScriptInfo`) and
the CLI's errors (:class:`TenantkitUsageError`: exit 2, :class:`TenantkitFailure`: exit 1).

Command modules add their commands to :data:`cli`::

    @cli.command("sites")
    @pass_info
    def sites_command(info: ScriptInfo) -> None:
        registry = Registry.load(info.settings)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from tenantkit.config import Settings
from tenantkit.errors import ConfigError

__all__ = ["ScriptInfo", "TenantkitFailure", "TenantkitUsageError", "cli", "json_failures",
           "pass_info"]


class TenantkitUsageError(click.UsageError):
    """Bad arguments or settings: exit code 2, with the message saying what to fix."""


class TenantkitFailure(click.ClickException):
    """The command was right but the work failed: exit code 1."""

    exit_code = 1


#: Set by :func:`tenantkit.cli.main` (the console script): configure the process's logging
#: from the settings when they are loaded. Off under ``click.testing`` and when embedded.
CONFIGURE_LOGGING = {"on": False}


class ScriptInfo:
    """Carries ``--config`` and loads :class:`Settings` on first use (and, in the console
    script, configures logging from them: :mod:`tenantkit.logs`)."""

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
            if CONFIGURE_LOGGING["on"]:
                from tenantkit.logs import configure_logging

                configure_logging(self._settings)
        return self._settings


pass_info = click.make_pass_decorator(ScriptInfo, ensure=True)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def json_failures(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """For a command with ``--json`` (parameter ``as_json``): a failure is also one JSON
    object on stdout, ``{"ok": false, "error": "...", "exit_code": 1}``, so a script reading
    stdout always gets JSON; the message still goes to stderr and the exit code is the same
    (1: the work failed, 2: bad usage)::

        @cli.command("purge")
        @click.option("--json", "as_json", is_flag=True)
        @pass_info
        @json_failures
        def purge_command(info: ScriptInfo, as_json: bool) -> None: ...
    """

    @functools.wraps(command)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except click.ClickException as exc:
            if kwargs.get("as_json"):
                click.echo(json.dumps({"ok": False, "error": exc.format_message(),
                                       "exit_code": exc.exit_code}, indent=2))
            raise

    return run


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
