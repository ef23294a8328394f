"""``tenantkit serve``, ``invalidator`` and ``demo``: the long-running processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tenantkit.cli.group import ScriptInfo, TenantkitFailure, TenantkitUsageError, cli, pass_info
from tenantkit.errors import TenantkitError


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
    from tenantkit.registry import Registry
    from tenantkit.watch import SiteWatcher

    settings = info.settings
    registry = Registry.load(settings)
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
        invalidator.sources = binlogs  # reported in its status file
    try:
        with SiteWatcher(registry):
            for binlog in binlogs:
                binlog.start()
            invalidator.run_forever()
    finally:
        for binlog in binlogs:
            binlog.stop()
        chosen.close()


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


@cli.command("demo")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Port on 127.0.0.1.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("tenantkit-demo"), show_default=True,
              help="Where the demo keeps its settings, sites, caches and databases.")
def demo_command(port: int, directory: Path) -> None:
    """Two demo blogs on one shim: watch the page cache fill and purge. Ctrl-C stops it."""
    from tenantkit.cli.group import CONFIGURE_LOGGING
    from tenantkit.config import Settings
    from tenantkit.demo.run import PortInUse, run_demo

    if CONFIGURE_LOGGING["on"]:
        from tenantkit.logs import configure_logging

        configure_logging(Settings())
    try:
        run_demo(directory, port=port)
    except PortInUse as exc:
        raise TenantkitFailure(f"demo: {exc.strerror}") from exc
    except OSError as exc:
        raise TenantkitFailure(f"demo: {exc.strerror or exc} (is port {port} in use? "
                               "try --port)") from exc
