"""What tenantkit writes for other programs: each module renders one program's configuration
from the settings and the site files, asking :mod:`tenantkit.layout` for paths and
:func:`tenantkit.db.servers.site_servers` for database servers.

- :mod:`tenantkit.export.nginx`: the catch-all server block (``tenantkit nginx-config``)
- :mod:`tenantkit.export.wordpress`: ``wp-config.php`` constants for the drop-in
- :mod:`tenantkit.export.punbb`: the forum map the patched PunBB reads
- :mod:`tenantkit.export.tags`: the tag vocabulary as PHP constants (contrib/tenantkit-events.php)
"""
