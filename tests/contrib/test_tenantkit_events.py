"""contrib/tenantkit-events.php: tenantkit_publish and tenantkit_normalize_host, through php-cli."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantkit.errors import InvalidHost
from tenantkit.hosts import normalize_host
from tenantkit.testing import RedisServer

from .phpcli import PhpCall, run_php_calls

EVENTS = ["tenantkit-events.php"]


def publish(php_call: PhpCall, event: dict[str, Any], bus: str,
            fallback: str | None = None) -> tuple[bool, str]:
    result = php_call(EVENTS, [("tenantkit_publish", [event, bus, fallback])])
    return result.results[0], result.stderr


def stream_events(server: RedisServer, db: int = 0,
                  stream: str = "tenantkit:events") -> list[dict[str, Any]]:
    with redis.Redis(host="127.0.0.1", port=server.port, db=db) as client:
        entries = client.xrange(stream)
    return [json.loads(fields[b"event"]) for _id, fields in entries]


def trigger_files(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


COMMENT = {"type": "comment_posted", "site": "blog", "post_id": 42, "approved": True,
           "gtid": "0-1-7", "paths": ["/é/"]}


# --- publishing to Redis -------------------------------------------------------------------

def test_event_reaches_the_stream_with_v_id_ts_origin_filled(
        php_call: PhpCall, redis_server: RedisServer) -> None:
    before = time.time()
    ok, stderr = publish(php_call, COMMENT, redis_server.url)
    assert ok is True
    assert stderr == ""
    [event] = stream_events(redis_server)
    assert {k: event[k] for k in COMMENT} == COMMENT
    assert event["v"] == 1
    assert event["origin"] == "php"
    assert isinstance(event["ts"], float) and before - 1 <= event["ts"] <= time.time() + 1
    assert len(event["id"]) == 32


def test_select_db_and_stream_name_from_the_url(
        php_call: PhpCall, redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/3?stream=other:events&maxlen=5"
    for post in range(8):
        assert publish(php_call, {**COMMENT, "post_id": post}, url)[0] is True
    assert stream_events(redis_server, db=0, stream="other:events") == []
    events = stream_events(redis_server, db=3, stream="other:events")
    # MAXLEN ~ trims lazily, so only bound it from above; every event that is kept is intact.
    assert 1 <= len(events) <= 8
    assert events[-1]["post_id"] == 7


def test_ids_given_by_the_caller_are_kept_and_fields_not_overwritten(
        php_call: PhpCall, redis_server: RedisServer) -> None:
    event = {**COMMENT, "id": "abc-1", "ts": 12.5, "origin": "cli"}
    assert publish(php_call, event, redis_server.url)[0] is True
    [got] = stream_events(redis_server)
    assert (got["id"], got["ts"], got["origin"]) == ("abc-1", 12.5, "cli")


# --- failures of the bus: logged, fallback file, never an exception ---------------------------

def test_redis_down_falls_back_to_a_trigger_file(
        php_call: PhpCall, redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.stop()
    ok, stderr = publish(php_call, COMMENT, redis_server.url, str(tmp_path / ".purge"))
    assert ok is True
    assert "not published to redis://127.0.0.1" in stderr
    assert "Connection refused" in stderr
    [event] = trigger_files(tmp_path / ".purge")
    assert event["post_id"] == 42 and event["origin"] == "php"
    assert [p.name for p in (tmp_path / ".purge").iterdir()] == [event["id"] + ".json"]


def test_redis_down_without_fallback_returns_false(
        php_call: PhpCall, redis_server: RedisServer) -> None:
    redis_server.stop()
    ok, stderr = publish(php_call, COMMENT, redis_server.url)
    assert ok is False
    assert "Connection refused" in stderr


def test_a_silent_server_times_out_promptly(php_call: PhpCall, tmp_path: Path) -> None:
    # A socket that accepts connections (backlog) but never answers: a hung Redis.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        start = time.monotonic()
        ok, stderr = publish(php_call, COMMENT, f"redis://127.0.0.1:{port}/0?timeout=0.2",
                             str(tmp_path))
        elapsed = time.monotonic() - start
    assert ok is True
    assert "no answer within 0.2s" in stderr
    assert elapsed < 10  # generous: the point is that it does not hang
    assert len(trigger_files(tmp_path)) == 1


def test_redis_error_reply_is_reported(
        php_call: PhpCall, redis_server: RedisServer, tmp_path: Path) -> None:
    # This Redis has no password: AUTH is refused, and the password is masked in the log.
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/0"
    ok, stderr = publish(php_call, COMMENT, url, str(tmp_path))
    assert ok is True
    assert "AUTH failed" in stderr
    assert "s3cret" not in stderr and "********" in stderr
    assert stream_events(redis_server) == []
    assert len(trigger_files(tmp_path)) == 1


@pytest.mark.parametrize("bus, message", [
    pytest.param("redis://127.0.0.1:6379/zero", "must be a number", id="db not a number"),
    pytest.param("http://127.0.0.1/", "not a redis:// URL", id="wrong scheme"),
    pytest.param("redis:///0", "not a redis:// URL", id="no host"),
])
def test_broken_bus_urls(php_call: PhpCall, bus: str, message: str, tmp_path: Path) -> None:
    ok, stderr = publish(php_call, COMMENT, bus, str(tmp_path))
    assert ok is True
    assert message in stderr
    assert len(trigger_files(tmp_path)) == 1


def test_stream_key_type_clash_is_an_error_not_a_crash(
        php_call: PhpCall, redis_server: RedisServer, tmp_path: Path) -> None:
    with redis.Redis(host="127.0.0.1", port=redis_server.port) as client:
        client.set("tenantkit:events", "a string, not a stream")
    ok, stderr = publish(php_call, COMMENT, redis_server.url, str(tmp_path))
    assert ok is True
    assert "XADD failed: WRONGTYPE" in stderr


# --- trigger files ---------------------------------------------------------------------------

def test_trigger_file_bus_writes_one_complete_file_and_no_temp_left(
        php_call: PhpCall, tmp_path: Path) -> None:
    purge = tmp_path / "blog" / ".purge"
    result = php_call(EVENTS, [("tenantkit_publish", [{**COMMENT, "post_id": n}, str(purge)])
                               for n in range(3)])
    assert result.results == [True, True, True]
    assert result.stderr == ""
    assert sorted(e["post_id"] for e in trigger_files(purge)) == [0, 1, 2]
    assert all(p.suffix == ".json" for p in purge.iterdir())


def test_unwritable_trigger_directory(php_call: PhpCall, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ok, stderr = publish(php_call, COMMENT, str(blocker / ".purge"))
    assert ok is False
    assert "does not exist and cannot be created" in stderr


@pytest.mark.parametrize("event, message", [
    pytest.param({"site": "blog"}, '"type" must be one of', id="no type"),
    pytest.param({"type": "explode", "site": "blog"}, '"type" must be one of', id="unknown type"),
    pytest.param({"type": "purge"}, '"site" must be a site name', id="no site"),
    pytest.param({"type": "purge", "site": "../etc"}, '"site" must be', id="site path"),
    pytest.param({"type": "purge", "site": 7}, '"site" must be', id="site not a string"),
    pytest.param({"type": "purge", "site": "blog", "v": 2}, '"v" must be 1', id="version 2"),
    pytest.param({"type": "purge", "site": "blog", "id": "../../x"}, '"id" may only',
                 id="id path"),
    pytest.param({"type": "purge", "site": "blog", "paths": ["/x" * 40000]}, "the limit is 65536",
                 id="over 64 KiB"),
])
def test_malformed_events_are_dropped_with_a_reason(
        php_call: PhpCall, redis_server: RedisServer, tmp_path: Path,
        event: dict[str, Any], message: str) -> None:
    ok, stderr = publish(php_call, event, redis_server.url, str(tmp_path))
    assert ok is False
    assert message in stderr
    assert stream_events(redis_server) == []
    assert list(tmp_path.iterdir()) == []


# --- hosts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    pytest.param("example.com", "example.com", id="plain"),
    pytest.param("Blog.Example.COM", "blog.example.com", id="lowercase"),
    pytest.param("example.com.", "example.com", id="trailing dot"),
    pytest.param("example.com:8080", "example.com", id="port"),
    pytest.param("example.com.:443", "example.com", id="trailing dot and port"),
    pytest.param("[::1]", "[::1]", id="ipv6"),
    pytest.param("[::1]:8080", "[::1]", id="ipv6 with port"),
    pytest.param("[2001:DB8::1]", "[2001:db8::1]", id="ipv6 lowercased"),
    pytest.param("127.0.0.1:80", "127.0.0.1", id="ipv4 with port"),
    pytest.param("xn--bcher-kva.example", "xn--bcher-kva.example", id="a-label"),
    pytest.param("under_score.example", "under_score.example", id="underscore"),
    pytest.param("a" * 63 + ".com", "a" * 63 + ".com", id="label of 63"),
    pytest.param("", None, id="empty"),
    pytest.param(".", None, id="only a dot"),
    pytest.param("example.com..", None, id="two trailing dots"),
    pytest.param("a..b", None, id="empty label"),
    pytest.param(".example.com", None, id="leading dot"),
    pytest.param("exa mple.com", None, id="space"),
    pytest.param("example.com\t", None, id="tab"),
    pytest.param("example.com\r\nX: y", None, id="header injection"),
    pytest.param("exa\x00mple.com", None, id="nul"),
    pytest.param("a/b", None, id="slash"),
    pytest.param("a\\b", None, id="backslash"),
    pytest.param("..", None, id="dot dot"),
    pytest.param("a" * 64 + ".com", None, id="label of 64"),
    pytest.param(".".join(["a" * 50] * 5) + ".com", None, id="name over 253"),
    pytest.param("example.com:", None, id="empty port"),
    pytest.param("example.com:0", "example.com", id="port 0"),
    pytest.param("[2001:db8:0:0:0:0:0:1]", "[2001:db8::1]", id="ipv6 compressed"),
    pytest.param("[::ffff:1.2.3.4]", "[::ffff:102:304]", id="ipv4-mapped like python"),
    pytest.param("[fe80::1%eth0]", None, id="ipv6 zone"),
    pytest.param("example.com:65536", None, id="port too big"),
    pytest.param("example.com:8o", None, id="port not digits"),
    pytest.param("example.com:-1", None, id="negative port"),
    pytest.param("a:b:c", None, id="bare ipv6-ish"),
    pytest.param("[::1", None, id="unclosed bracket"),
    pytest.param("[::1]x", None, id="junk after bracket"),
    pytest.param("[nothex::1]", None, id="bad ipv6"),
    pytest.param("user@example.com", None, id="userinfo"),
    pytest.param("exa%6dple.com", None, id="percent"),
    pytest.param("bücher.example", None, id="non-ascii without intl"),
])
def test_normalize_host(php_call: PhpCall, raw: str, expected: str | None) -> None:
    result = php_call(EVENTS, [("tenantkit_normalize_host", [raw])])
    if raw == "bücher.example":
        ascii_result = php_call(EVENTS, [("function_exists", ["idn_to_ascii"])]).results[0]
        if ascii_result:
            expected = "xn--bcher-kva.example"
    assert result.results == [expected]
    assert result.stderr == ""


_hosts = st.one_of(
    st.text(alphabet=st.sampled_from("abcXYZ09-_.:[]/\\ \té%@"), min_size=0, max_size=30),
    st.builds(lambda name, port: f"{name}:{port}",
              st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5}){0,3}\.?", fullmatch=True),
              st.integers(0, 70000)),
    st.ip_addresses(v=6).map(lambda a: f"[{a.exploded.upper()}]"),
    st.just("a" * 63 + "." + "b" * 64),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(st.lists(_hosts, min_size=20, max_size=40))
def test_normalize_host_is_idempotent_safe_and_agrees_with_python(
        php: str, hosts: list[str]) -> None:
    once = run_php_calls(php, EVENTS, [("tenantkit_normalize_host", [h]) for h in hosts]).results
    # Python's tenantkit.hosts.normalize_host is the reference. PHP without the intl
    # extension refuses non-ASCII names that Python would convert to A-labels.
    for raw, got in zip(hosts, once, strict=True):
        try:
            expected: str | None = normalize_host(raw)
        except InvalidHost:
            expected = None
        if got is None and expected is not None and not raw.isascii():
            continue
        assert got == expected, raw
    valid = [h for h in once if h is not None]
    twice = run_php_calls(php, EVENTS, [("tenantkit_normalize_host", [h]) for h in valid]).results
    assert twice == valid
    for host in valid:
        assert host == host.lower()
        assert not any(c in host for c in " \t/\\") and ".." not in host
        assert not host.endswith(".") and 0 < len(host) <= 253

