"""tenantkit: host many sites from one copy of a web stack.

The public API lives here; import from ``tenantkit`` rather than its modules::

    from tenantkit import Settings, TenantkitError
"""

from __future__ import annotations

from tenantkit.cache.events import (
    CommentChanged,
    CommentPosted,
    PostDeleted,
    PostEdited,
    Purge,
    SiteChanged,
    from_json,
    to_json,
)
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import CachedPage, FillTicket, PageCache
from tenantkit.cache.publish import publish
from tenantkit.config import Settings
from tenantkit.db.classify import statement_role
from tenantkit.db.compress import CompressedConnection, CompressionUnavailableWarning, WireStats
from tenantkit.db.router import Router
from tenantkit.db.tokens import ConsistencyToken, TokenScope
from tenantkit.errors import (
    BusError,
    CacheError,
    ConfigError,
    DatabaseError,
    ForumMapError,
    InvalidHost,
    InvalidToken,
    MalformedEvent,
    PrimaryUnavailable,
    ProtocolError,
    ProvisionError,
    ReplicaUnavailable,
    SiteError,
    SiteFileError,
    SplitBrain,
    TenantkitError,
    WpConfigError,
)
from tenantkit.export.wordpress import render_wp_config
from tenantkit.hosts import Conflict, HostIndex, normalize_host, normalize_pattern, request_host
from tenantkit.provision import (
    DeprovisionResult,
    ProvisionResult,
    ProvisionUsageError,
)
from tenantkit.registry import Registry, ReloadReport
from tenantkit.secret import SecretURL, mask_url
from tenantkit.sites import (
    Backend,
    InvalidSiteName,
    Site,
    SiteCache,
    SiteDatabase,
    load_site,
    validate_name,
)
from tenantkit.watch import SiteWatcher

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BusError",
    "CacheError",
    "CachedPage",
    "CommentChanged",
    "CommentPosted",
    "CompressedConnection",
    "CompressionUnavailableWarning",
    "ConfigError",
    "Conflict",
    "ConsistencyToken",
    "DatabaseError",
    "DeprovisionResult",
    "FillTicket",
    "ForumMapError",
    "HostIndex",
    "InvalidHost",
    "InvalidSiteName",
    "InvalidToken",
    "Invalidator",
    "MalformedEvent",
    "PageCache",
    "PostDeleted",
    "PostEdited",
    "PrimaryUnavailable",
    "ProtocolError",
    "ProvisionError",
    "ProvisionResult",
    "ProvisionUsageError",
    "Purge",
    "Registry",
    "ReloadReport",
    "ReplicaUnavailable",
    "Router",
    "SecretURL",
    "Settings",
    "Site",
    "SiteCache",
    "SiteChanged",
    "SiteDatabase",
    "SiteError",
    "SiteFileError",
    "SiteWatcher",
    "SplitBrain",
    "TenantkitError",
    "TokenScope",
    "WireStats",
    "WpConfigError",
    "from_json",
    "load_site",
    "mask_url",
    "normalize_host",
    "normalize_pattern",
    "publish",
    "render_wp_config",
    "request_host",
    "statement_role",
    "to_json",
    "validate_name",
]
