"""Where tenantkit keeps things under ``cache_dir``: the one home of the on-disk layout.

::

    cache_dir/<site>/                      site_root(cache_dir, "blog")
    cache_dir/<site>/pages/                pages_dir(root): the PageCache root
    cache_dir/<site>/pages/current -> gN   CURRENT: swapped atomically on a whole-site flush
    cache_dir/<site>/pages/gN/<host>/<path>/index.html     BODY: what nginx serves
    cache_dir/<site>/app/                  app_dir(root): the application's own cache files
    cache_dir/<site>/tmp/                  tmp_dir(root)
    cache_dir/<site>/.purge/               purge_dir(root): trigger files dropped by PHP apps
    cache_dir/<site>/.purge/failed/        failed_dir(root): trigger files that could not be
                                           handled (dead letters), each with a .reason file
    cache_dir/_binlog/<host>-<port>.json   binlog_state(cache_dir, ...): the binlog source's
                                           position (GTID) on that replica, for this node
    cache_dir/_status/<node>.json          invalidator_status(cache_dir, node): what this
                                           node's invalidator last reported (health, metrics)
    cache_dir/_node/invalidator-<node>.lock   invalidator_lock(cache_dir, node): held (flock)
                                           by the one process that is the node's
                                           invalidation actor
    cache_dir/_node/counters/<pid>.json    node_counters(cache_dir, name): what each process
                                           of the node did to its page caches
    cache_dir/_hosts/<host> -> ../<site>/pages/current/<host>   host_link(...): one per cached
                                           host, so nginx needs no per-site configuration
    cache_dir/.<site>.deleted-<tag>/       site_trash(...): a removed site's tree, moved aside
                                           before it is deleted

Everything that names one of these paths (the page cache, provisioning, the shim, the nginx,
WordPress and PunBB exports, the trigger-file bus) asks this module; the PHP side receives its
paths from the generated configuration and never re-derives them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BODY", "CURRENT", "HOSTS_DIR", "SITE_SUBDIRS", "app_dir", "binlog_state", "failed_dir",
    "host_link", "host_link_target", "hosts_dir", "invalidator_lock", "invalidator_status",
    "node_counters",
    "pages_dir", "purge_dir", "site_root", "site_trash", "tmp_dir",
]

PAGES = "pages"
APP = "app"
TMP = "tmp"
PURGE = ".purge"
FAILED = "failed"
#: The directories ``tenantkit provision`` creates under a site's root, in this order.
SITE_SUBDIRS = (PAGES, APP, TMP, PURGE)
#: The symlink in ``pages/`` that names the current generation.
CURRENT = "current"
#: The file name of a stored page body (nginx serves ``<host><uri>index.html``).
BODY = "index.html"
#: The directory of per-host links nginx serves hits through.
HOSTS_DIR = "_hosts"


def site_root(cache_dir: str | os.PathLike[str], site: str) -> Path:
    """``cache_dir/<site>``: everything the site keeps on disk."""
    return Path(cache_dir) / site


def site_trash(cache_dir: str | os.PathLike[str], site: str, tag: str) -> Path:
    """``cache_dir/.<site>.deleted-<tag>``: where a site's tree goes before it is deleted (a
    dot name is never a site's)."""
    return Path(cache_dir) / f".{site}.deleted-{tag}"


def pages_dir(root: Path) -> Path:
    return root / PAGES


def app_dir(root: Path) -> Path:
    return root / APP


def tmp_dir(root: Path) -> Path:
    return root / TMP


def purge_dir(root: Path) -> Path:
    return root / PURGE


def failed_dir(root: Path) -> Path:
    """``.purge/failed``: the trigger files' dead letters."""
    return purge_dir(root) / FAILED


def binlog_state(cache_dir: str | os.PathLike[str], host: str, port: int) -> Path:
    """``cache_dir/_binlog/<host>-<port>.json``: where the binlog source keeps its position."""
    return Path(cache_dir) / "_binlog" / f"{host}-{port}.json"


def invalidator_status(cache_dir: str | os.PathLike[str], node: str = "") -> Path:
    """``cache_dir/_status/<node>.json`` (the directory itself without ``node``): the status
    file the node's invalidator keeps (:mod:`tenantkit.cache.status`)."""
    directory = Path(cache_dir) / "_status"
    return directory / f"{node}.json" if node else directory


def hosts_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """``cache_dir/_hosts``: the directory nginx's catch-all server serves hits from."""
    return Path(cache_dir) / HOSTS_DIR


def host_link(cache_dir: str | os.PathLike[str], host: str) -> Path:
    return hosts_dir(cache_dir) / host


def host_link_target(site: str, host: str) -> str:
    """What ``_hosts/<host>`` points at, relative to ``_hosts``:
    ``../<site>/pages/current/<host>``."""
    return os.path.join("..", site, PAGES, CURRENT, host)


def node_counters(cache_dir: str | os.PathLike[str], name: str = "") -> Path:
    """``cache_dir/_node/counters/<name>.json`` (the directory itself without ``name``): one
    process's counts of what it did to the node's page caches
    (:mod:`tenantkit.cache.nodecounters`)."""
    directory = Path(cache_dir) / "_node" / "counters"
    return directory / f"{name}.json" if name else directory


def invalidator_lock(cache_dir: str | os.PathLike[str], node: str) -> Path:
    """``cache_dir/_node/invalidator-<node>.lock`` (*node*: a file-safe name): the lock that
    makes one process the node's invalidation actor (:mod:`tenantkit.cache.nodelock`)."""
    return Path(cache_dir) / "_node" / f"invalidator-{node}.lock"
