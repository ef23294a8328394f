"""tenantkit: host many sites from one copy of a web stack.

The public API lives here; import from ``tenantkit`` rather than its modules::

    from tenantkit import Settings, TenantkitError
"""

from __future__ import annotations

from tenantkit.config import Settings, mask_url
from tenantkit.db.compress import CompressedConnection, CompressionUnavailableWarning, WireStats
from tenantkit.errors import (
    BusError,
    CacheError,
    ConfigError,
    DatabaseError,
    InvalidHost,
    PrimaryUnavailable,
    ProtocolError,
    ProvisionError,
    ReplicaUnavailable,
    SiteError,
    SiteFileError,
    TenantkitError,
)
from tenantkit.hosts import Conflict, HostIndex, normalize_host, normalize_pattern, request_host
from tenantkit.registry import Registry, ReloadReport
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
    "CompressedConnection",
    "CompressionUnavailableWarning",
    "ConfigError",
    "Conflict",
    "DatabaseError",
    "HostIndex",
    "InvalidHost",
    "InvalidSiteName",
    "PrimaryUnavailable",
    "ProtocolError",
    "ProvisionError",
    "Registry",
    "ReloadReport",
    "ReplicaUnavailable",
    "Settings",
    "Site",
    "SiteCache",
    "SiteDatabase",
    "SiteError",
    "SiteFileError",
    "SiteWatcher",
    "TenantkitError",
    "WireStats",
    "load_site",
    "mask_url",
    "normalize_host",
    "normalize_pattern",
    "request_host",
    "validate_name",
]
