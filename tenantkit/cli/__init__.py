"""The ``tenantkit`` command: the group and :class:`ScriptInfo` in :mod:`.group`, one module
per command group (:mod:`.sites`, :mod:`.check`, :mod:`.purge`, :mod:`.serve`, :mod:`.export`).

Every command reads the settings lazily through :class:`ScriptInfo`, so ``--help`` works
even with a broken settings file, and a bad one is reported as a usage error (exit 2)::

    tenantkit --config /etc/tenantkit.toml config
    TENANTKIT_CONFIG=/etc/tenantkit.toml tenantkit config
"""

from __future__ import annotations

import sys

import click

from tenantkit.cli import check, each, export, purge, serve, sites
from tenantkit.cli.group import (
    CONFIGURE_LOGGING,
    ScriptInfo,
    TenantkitFailure,
    TenantkitUsageError,
    cli,
    pass_info,
)
from tenantkit.errors import TenantkitError

__all__ = ["ScriptInfo", "TenantkitFailure", "TenantkitUsageError", "cli", "main", "pass_info"]

# imported for the commands they add to cli
_COMMAND_MODULES = (sites, check, each, purge, serve, export)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the click group, mapping our errors to exit codes."""
    CONFIGURE_LOGGING["on"] = True
    try:
        cli.main(args=argv, prog_name="tenantkit", standalone_mode=True)
    except TenantkitError as exc:  # a library error that escaped a command
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
