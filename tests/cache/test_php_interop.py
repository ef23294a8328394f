"""Events written by contrib/tenantkit-events.php are consumed by the Python Invalidator."""

from __future__ import annotations

from pathlib import Path

from contrib.phpcli import php_binary, run_php_calls

from tenantkit.cache.events import CommentPosted, PostEdited
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.testing import RedisServer

from .helpers import HOST, Purges, make_settings, registry_for


def _php_publish(event: dict[str, object], bus: str) -> bool:
    result = run_php_calls(php_binary(), ["tenantkit-events.php"],
                           [("tenantkit_publish", [event, bus, None])])
    return bool(result.results[0])


def test_php_stream_event_purges(tmp_path: Path, redis_server: RedisServer) -> None:
    settings = make_settings(tmp_path, transport="redis", redis_url=redis_server.url,
                             policy="targeted")
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1):
        assert purges.wait_count(1)  # the new group's flush
        cache.put(HOST, "/p/42/", b"post", tags=["post:42"])
        assert _php_publish({"type": "comment_posted", "site": "blog", "post_id": 42,
                             "approved": True, "gtid": "0-1-5"}, redis_server.url)
        assert purges.wait_count(2)
    event = purges.seen[1][1]
    assert event == CommentPosted("blog", 42, True, gtid="0-1-5")
    assert event.origin == "php"
    assert cache.get(HOST, "/p/42/").stale  # type: ignore[union-attr]


def test_php_trigger_file_purges(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, policy="targeted")
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    cache.put(HOST, "/p/7/", b"post", tags=["post:7"])
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.05,
                     scan_interval=0.2):
        assert _php_publish({"type": "post_edited", "site": "blog", "post_id": 7,
                             "terms": [3], "author": 2},
                            str(settings.cache_dir / "blog" / ".purge"))
        assert purges.wait_count(1)
    assert purges.seen[0][1] == PostEdited("blog", 7, (3,), 2)
    assert cache.get(HOST, "/p/7/").stale  # type: ignore[union-attr]
