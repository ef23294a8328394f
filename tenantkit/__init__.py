"""tenantkit: host many sites from one copy of a web stack.

The public API lives here; import from ``tenantkit`` rather than its modules::

    from tenantkit import Settings, TenantkitError
"""

from __future__ import annotations

from tenantkit.config import Settings, mask_url
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

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "CacheError",
    "ConfigError",
    "DatabaseError",
    "InvalidHost",
    "PrimaryUnavailable",
    "ProtocolError",
    "ProvisionError",
    "ReplicaUnavailable",
    "Settings",
    "SiteError",
    "SiteFileError",
    "TenantkitError",
    "mask_url",
]
