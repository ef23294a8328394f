"""The page cache and its invalidation.

- :mod:`~tenantkit.cache.pagecache`: :class:`PageCache`, one site's pages on disk, built
  from :mod:`~tenantkit.cache.keys` (page keys, tag and URL names),
  :mod:`~tenantkit.cache.pagefile` (one page: body and sidecar),
  :mod:`~tenantkit.cache.generations` (whole-site flushes), :mod:`~tenantkit.cache.tagindex`,
  :mod:`~tenantkit.cache.fill` (fill locks, purge markers), :mod:`~tenantkit.cache.stamp`
  (the change stamp) and :mod:`~tenantkit.cache.stats`;
- :mod:`~tenantkit.cache.caches`: :class:`SiteCaches`, one PageCache per site per process;
- :mod:`~tenantkit.cache.events`: content events and purge policies;
- :mod:`~tenantkit.cache.purge`: :func:`purge`, the one purge path (admin, CLI, Invalidator);
- :mod:`~tenantkit.cache.transports`: how events reach every node (local, trigger files,
  Redis Streams, Redis pub/sub);
- :mod:`~tenantkit.cache.publish`: :func:`publish`, after a commit;
- :mod:`~tenantkit.cache.invalidator`: :class:`Invalidator`, the per-node consumer;
- :mod:`~tenantkit.cache.hooks`: SQLAlchemy hooks that publish events after a commit.
"""
