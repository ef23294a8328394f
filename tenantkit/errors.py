"""Every error tenantkit raises, in one tree.

::

    TenantkitError
     ├── ConfigError            tenantkit.toml or a TENANTKIT_* variable is wrong
     ├── SiteError
     │    ├── SiteFileError     a site file cannot be parsed or validated
     │    ├── InvalidHost       a host name or pattern is not acceptable
     │    ├── ForumMapError     sites cannot be turned into a PunBB forum map
     │    └── WpConfigError     a site cannot be turned into a wp-config.php block
     ├── ProvisionError         provisioning or deprovisioning a site failed
     ├── DatabaseError
     │    ├── PrimaryUnavailable  the primary cannot be reached; writes cannot proceed
     │    │    └── SplitBrain    more than one primary candidate is writable; writes refused
     │    ├── ReplicaUnavailable  no replica can serve a read
     │    └── InvalidToken      a consistency token (cookie) is not one tenantkit wrote
     ├── ProtocolError          a peer broke a wire protocol (compressed MySQL frames, ...)
     ├── CacheError             a page cache path or file is unusable
     └── BusError               the invalidation bus cannot publish or consume
          └── MalformedEvent    an invalidation event is not in the documented format

Every message says what was wrong and what to do about it, for example::

    site file sites/blog.toml: key "hosts": expected a list of host names,
    got "blog.example.com" (write hosts = ["blog.example.com"])

Driver errors are translated at the boundary with ``raise ... from exc`` so the
original stays attached as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "CacheError",
    "ConfigError",
    "DatabaseError",
    "ForumMapError",
    "InvalidHost",
    "InvalidToken",
    "MalformedEvent",
    "PrimaryUnavailable",
    "ProtocolError",
    "ProvisionError",
    "ReplicaUnavailable",
    "SiteError",
    "SiteFileError",
    "SplitBrain",
    "TenantkitError",
    "WpConfigError",
]


class TenantkitError(Exception):
    """Root of every error tenantkit raises on purpose."""


class ConfigError(TenantkitError):
    """The settings file or an environment override is invalid."""


class SiteError(TenantkitError):
    """Something about a site definition is wrong."""


class SiteFileError(SiteError):
    """A site file cannot be read, parsed or validated."""


class InvalidHost(SiteError, ValueError):
    """A Host header or host pattern failed normalisation.

    ``index`` is the position of the bad pattern in a list of them (else None).
    """

    index: int | None = None


class ForumMapError(SiteError):
    """Sites cannot be turned into a PunBB forum map (``tenantkit punbb-config``)."""


class WpConfigError(SiteError, ValueError):
    """A site cannot be turned into a wp-config.php block (``provision --print-wp-config``)."""


class ProvisionError(TenantkitError):
    """Provisioning or deprovisioning a site failed; nothing was half-created."""


class DatabaseError(TenantkitError):
    """A database server could not serve a statement."""


class PrimaryUnavailable(DatabaseError):
    """The primary cannot be reached, so writes cannot proceed (never sent to a replica)."""


class SplitBrain(PrimaryUnavailable):
    """More than one primary candidate is writable (``@@read_only = 0``): tenantkit refuses
    every write until exactly one is, and never guesses. ``servers`` names them (masked)."""

    servers: tuple[str, ...] = ()


class ReplicaUnavailable(DatabaseError):
    """No replica can serve a read."""


class InvalidToken(DatabaseError, ValueError):
    """A serialised consistency token is malformed (a forged or truncated cookie)."""


class ProtocolError(TenantkitError):
    """A peer sent bytes that break the wire protocol."""


class CacheError(TenantkitError):
    """A page cache key, path or file is unusable."""


class BusError(TenantkitError):
    """The invalidation bus cannot publish or consume events."""


class MalformedEvent(BusError, ValueError):
    """An invalidation event is not in the documented JSON format: logged and dropped."""
