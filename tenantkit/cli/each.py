"""``tenantkit each``: run one command for every site, in parallel with a bound::

    tenantkit each -- wp --path=/usr/share/wordpress cache flush
    tenantkit each --sites 'blog-*' --jobs 8 -- sh -c 'echo "$TENANTKIT_SITE $TENANTKIT_HOSTS"'

Each run gets the site's values in its environment: ``TENANTKIT_SITE``, ``TENANTKIT_HOSTS``
(space-separated), ``TENANTKIT_HOST`` (the first plain host), ``TENANTKIT_CACHE_DIR`` (the
site's cache root), ``TENANTKIT_SITE_FILE``, ``TENANTKIT_BACKEND`` (the app or URL) and
``TENANTKIT_DATABASE_PRIMARY`` / ``TENANTKIT_DATABASE_REPLICAS`` (the real URLs: the command
needs them; whatever ``each`` prints masks them). Output is prefixed with the site's name;
a summary follows; the exit code is 1 when any run failed.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click

from tenantkit.cli.group import ScriptInfo, TenantkitFailure, TenantkitUsageError, cli, pass_info
from tenantkit.config import Settings
from tenantkit.secret import SecretURL
from tenantkit.sites import Site

__all__ = ["each_command", "site_environment"]

_print_lock = threading.Lock()


def reveal(url: str) -> str:
    """The URL with its password, for a child process that must connect."""
    return url.reveal() if isinstance(url, SecretURL) else str(url)


def site_environment(site: Site, settings: Settings) -> dict[str, str]:
    """The ``TENANTKIT_*`` variables a per-site command sees."""
    from tenantkit.db.servers import site_servers

    servers = site_servers(site, settings)
    plain = [h for h in site.hosts if not h.startswith(("*", ".", "~")) and "*" not in h]
    return {
        "TENANTKIT_SITE": site.name,
        "TENANTKIT_HOSTS": " ".join(site.hosts),
        "TENANTKIT_HOST": plain[0] if plain else "",
        "TENANTKIT_CACHE_DIR": str(site.cache_root),
        "TENANTKIT_SITE_FILE": str(site.path or ""),
        "TENANTKIT_BACKEND": str(site.backend.app or site.backend.url or ""),
        "TENANTKIT_DATABASE_PRIMARY": reveal(servers.primary),
        "TENANTKIT_DATABASE_REPLICAS": ",".join(reveal(r) for r in servers.replicas),
    }


def _run(site: Site, settings: Settings, command: tuple[str, ...], timeout: float | None,
         quiet: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    env.update(site_environment(site, settings))
    started = time.monotonic()
    try:
        done = subprocess.run(list(command), env=env, capture_output=True, text=True,
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)
        code, out, err = done.returncode, done.stdout, done.stderr
    except FileNotFoundError:
        code, out, err = 127, "", f"{command[0]}: command not found\n"
    except subprocess.TimeoutExpired as exc:
        code = 124
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        err = f"timed out after {timeout:g}s\n"
    seconds = time.monotonic() - started
    if not quiet:
        with _print_lock:
            for line in out.splitlines():
                click.echo(f"{site.name}: {line}")
            for line in err.splitlines():
                click.echo(f"{site.name}: {line}", err=True)
    return {"site": site.name, "exit_code": code, "seconds": round(seconds, 3)}


@cli.command("each", context_settings={"ignore_unknown_options": True})
@click.option("--sites", "pattern", default="*", show_default=True, metavar="GLOB",
              help="Only the sites whose name matches this glob (e.g. 'blog-*').")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="How many runs at once.")
@click.option("--timeout", type=click.FloatRange(0.1), default=None,
              help="Seconds one run may take (then it counts as failed, exit 124).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_info
def each_command(info: ScriptInfo, pattern: str, jobs: int, timeout: float | None,
                 quiet: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND once per site, with the site's values in TENANTKIT_* variables.

    Write it after --, e.g. tenantkit each -- wp --path=/usr/share/wordpress cache flush.
    """
    from tenantkit.registry import Registry

    if not command:
        raise TenantkitUsageError("give a command after --, e.g. tenantkit each -- echo hi")
    settings = info.settings
    registry = Registry.load(settings, log_errors=False)
    chosen = [s for name, s in sorted(registry.sites.items()) if fnmatch.fnmatch(name, pattern)]
    if not chosen:
        known = ", ".join(sorted(registry.sites)) or f"none in {settings.sites_dir}"
        raise TenantkitUsageError(f"--sites {pattern!r} matches no site (sites: {known})")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda s: _run(s, settings, command, timeout, quiet), chosen))
    failed = [r for r in results if r["exit_code"] != 0]
    for r in failed:
        click.echo(f"failed: {r['site']} (exit {r['exit_code']})", err=True)
    click.echo(f"each: {len(results) - len(failed)} of {len(results)} site(s) ok"
               + (f", {len(failed)} failed" if failed else ""), err=True)
    if failed:
        raise TenantkitFailure(f"{len(failed)} of {len(results)} run(s) failed")
