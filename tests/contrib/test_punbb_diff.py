"""contrib/punbb.diff without PunBB: the diff is well formed, and the forum picking it adds
(include/tenantkit.php, taken out of the diff) serves the generated map right, over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import unidiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantkit.config import Settings
from tenantkit.export.punbb import build_forum_map, render_forum_map
from tenantkit.hosts import normalize_host
from tenantkit.sites import Backend, Site, SiteDatabase

from .punbb_support import (
    BASE_COMMIT,
    DIFF,
    Browser,
    added_file,
    load_patch,
    php_server,
    write_tenantkit_php,
)

HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def test_diff_header_names_the_commit_and_both_parts() -> None:
    text = DIFF.read_text(encoding="utf-8")
    head = text[: text.index("diff --git ")]
    assert BASE_COMMIT in head
    assert "v1.4.4" in head
    assert head.index("PART 1 -- PHP 8.2 fixes") < head.index("PART 2 -- several forums")


def test_every_hunk_is_well_formed() -> None:
    """Counted by hand, independently of unidiff: each header's counts match its lines."""
    lines = DIFF.read_text(encoding="utf-8").split("\n")
    hunks = 0
    i = 0
    while i < len(lines):
        found = HUNK_HEADER.match(lines[i])
        i += 1
        if not found:
            continue
        hunks += 1
        old = int(found.group(2) or 1)
        new = int(found.group(4) or 1)
        while old > 0 or new > 0:
            assert i < len(lines), f"hunk {found.group(0)} runs past the end of the diff"
            line = lines[i]
            i += 1
            if line.startswith("\\"):
                continue
            assert line[:1] in (" ", "-", "+"), f"line {i}: {line!r} inside {found.group(0)}"
            old -= line[:1] in (" ", "-")
            new -= line[:1] in (" ", "+")
            assert old >= 0 and new >= 0, f"line {i}: hunk {found.group(0)} is too long"
        nxt = lines[i] if i < len(lines) else ""
        assert nxt[:1] not in (" ", "-", "+") or nxt.startswith(("--- ", "+++ ")), (
            f"line {i + 1}: hunk {found.group(0)} is longer than its header says")
    assert hunks >= 40


def test_unidiff_parses_every_file() -> None:
    patch = load_patch()
    paths = {p.path for p in patch}
    assert {"include/essentials.php", "admin/install.php", "include/tenantkit.php",
            "post.php", "edit.php", "delete.php", "moderate.php", "include/parser.php",
            "include/functions.php", "include/utf8/ord.php"} <= paths
    for patched in patch:
        assert patched.source_file.startswith(("a/", "/dev/null"))
        assert patched.target_file.startswith("b/")
        for hunk in patched:
            assert hunk.source_length == sum(not line.is_added for line in hunk)
            assert hunk.target_length == sum(not line.is_removed for line in hunk)


def test_a_broken_hunk_count_is_caught() -> None:
    text = DIFF.read_text(encoding="utf-8")
    header = re.search(HUNK_HEADER.pattern, text, re.M)
    assert header is not None
    broken = text.replace(header.group(0), header.group(0).replace(
        f"+{header.group(3)},{header.group(4)}", f"+{header.group(3)},{int(header.group(4)) + 1}"),
        1)
    with pytest.raises(unidiff.UnidiffParseError):
        unidiff.PatchSet(broken)


def test_added_php_passes_lint(php: str, tmp_path: Path) -> None:
    target = tmp_path / "tenantkit.php"
    target.write_text(added_file(load_patch(), "include/tenantkit.php"))
    proc = subprocess.run([php, "-d", "error_reporting=-1", "-l", str(target)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0 and "No syntax errors" in proc.stdout, proc.stdout + proc.stderr


# --- the generated map, served by the patch's forum picking -----------------------------------

PROBE = """<?php
define('FORUM_ROOT', './');
require FORUM_ROOT.'include/tenantkit.php';
$forum = tenantkit_punbb_select();
header('Content-Type: application/json');
echo json_encode(array(
    'forum' => $forum ? $forum['name'] : null,
    'FORUM' => defined('FORUM'),
    'cache_dir' => defined('FORUM_CACHE_DIR') ? FORUM_CACHE_DIR : null,
    'db_prefix' => isset($db_prefix) ? $db_prefix : null,
    'db_host' => isset($db_host) ? $db_host : null,
    'base_url' => isset($base_url) ? $base_url : null,
    'cookie_name' => isset($cookie_name) ? $cookie_name : null,
));
"""


def _site(name: str, hosts: tuple[str, ...], cache: Path, *, forum: bool = True,
          prefix: str = "") -> Site:
    return Site(
        name=name, hosts=hosts, backend=Backend(type="proxy", url="http://127.0.0.1:1"),
        database=SiteDatabase(primary="mysql+pymysql://u:p@db.internal:3307/forums",
                              table_prefix=prefix),
        meta={"app": "punbb"} if forum else {}, cache_root=cache / name,
    )


@pytest.fixture(scope="module")
def served(php: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("punbb-select")
    cache = root / "cache"
    sites = [
        _site("forum-a", ("a.test", "*.a.test"), cache, prefix="fa_"),
        _site("forum-b", ("b.test", ".b.org", "forum.*"), cache, prefix="fb_"),
        _site("blog", ("blog.a.test", "*.blog.b.org"), cache, forum=False),
    ]
    for site in sites:
        (site.cache_root / "app").mkdir(parents=True)
    settings = Settings(sites_dir=root / "sites", cache_dir=cache)
    docroot = root / "www"
    write_tenantkit_php(docroot)
    (docroot / "probe.php").write_text(PROBE)
    (docroot / "tenantkit_forums.php").write_text(render_forum_map(build_forum_map(sites,
                                                                                   settings)))
    with php_server(php, docroot, root / "php.log") as port:
        yield port, root


@pytest.mark.parametrize(("host", "forum", "prefix"), [
    pytest.param("a.test", "forum-a", "fa_", id="exact"),
    pytest.param("A.TEST.:8080", "forum-a", "fa_", id="case, trailing dot and port"),
    pytest.param("x.y.a.test", "forum-a", "fa_", id="leading wildcard, two levels"),
    pytest.param("b.test", "forum-b", "fb_", id="second forum"),
    pytest.param("b.org", "forum-b", "fb_", id="dot wildcard matches the bare name"),
    pytest.param("www.b.org", "forum-b", "fb_", id="dot wildcard matches below"),
    pytest.param("forum.example.com", "forum-b", "fb_", id="trailing wildcard"),
])
def test_picks_the_forum_by_host(served: tuple[int, Path], host: str, forum: str,
                                 prefix: str) -> None:
    port, root = served
    response = Browser(port, host).get("/probe.php")
    assert response.status == 200, response.text
    got = json.loads(response.text)
    assert got["forum"] == forum
    assert got["db_prefix"] == prefix
    assert got["FORUM"] is True
    assert got["cache_dir"] == f"{root / 'cache' / forum / 'app'}/"
    assert got["db_host"] == "db.internal:3307"
    assert got["cookie_name"] == "forum_cookie_" + forum.replace("-", "_")
    # No [meta] base_url: the request's own host (and port), never PHP's SERVER_PORT
    assert got["base_url"] == "http://" + host.lower().replace(".:", ":").rstrip(".")


@pytest.mark.parametrize(("headers", "base_url"), [
    pytest.param({}, "http://b.test", id="host header"),
    pytest.param({"X-Forwarded-Host": "b.test", "X-Forwarded-Proto": "https",
                  "X-Forwarded-Port": "443"}, "https://b.test", id="forwarded, default port"),
    pytest.param({"X-Forwarded-Host": "B.test", "X-Forwarded-Proto": "http",
                  "X-Forwarded-Port": "8000"}, "http://b.test:8000", id="forwarded port"),
    pytest.param({"X-Forwarded-Host": "b.test:8443", "X-Forwarded-Proto": "https",
                  "X-Forwarded-Port": "9"}, "https://b.test:8443", id="port in the host wins"),
    pytest.param({"X-Forwarded-Host": "x, b.test", "X-Forwarded-Proto": "gopher"},
                 "http://b.test", id="last value; unknown scheme ignored"),
    pytest.param({"X-Forwarded-Host": "bad/host"}, "http://b.test", id="invalid host"),
])
def test_base_url_from_a_trusted_proxy(served: tuple[int, Path], headers: dict[str, str],
                                       base_url: str) -> None:
    port, _ = served
    got = json.loads(Browser(port, "b.test", headers=headers).get("/probe.php").text)
    assert got["base_url"] == base_url


def test_configured_base_url_wins(php: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    site = replace(_site("forum-a", ("a.test",), cache, prefix="fa_"),
                   meta={"app": "punbb", "base_url": "https://forum.example.org/board"})
    (site.cache_root / "app").mkdir(parents=True)
    write_tenantkit_php(tmp_path / "www")
    (tmp_path / "www" / "probe.php").write_text(PROBE)
    forum_map = build_forum_map([site], Settings(sites_dir=tmp_path, cache_dir=cache))
    (tmp_path / "www" / "tenantkit_forums.php").write_text(render_forum_map(forum_map))
    with php_server(php, tmp_path / "www", tmp_path / "php.log") as port:
        browser = Browser(port, "a.test:8080", headers={"X-Forwarded-Host": "evil.test",
                                                        "X-Forwarded-Port": "81"})
        got = json.loads(browser.get("/probe.php").text)
    assert got["base_url"] == "https://forum.example.org/board"


@pytest.mark.parametrize("host", [
    pytest.param("c.test", id="unknown"),
    pytest.param("blog.a.test", id="another site, exact beats the forum's wildcard"),
    pytest.param("x.blog.b.org", id="another site, longer wildcard beats the forum's"),
    pytest.param("a.test.evil.com", id="forum name as a prefix"),
    pytest.param("evila.test", id="forum name as a suffix without a dot"),
    pytest.param("", id="empty"),
    pytest.param("a.test/../b.test", id="path"),
    pytest.param("a.test\tb", id="control character"),
    pytest.param("a..test", id="empty label"),
    pytest.param("[::1", id="broken IPv6"),
    pytest.param("a.test:99999", id="bad port"),
    pytest.param("x" * 300 + ".test", id="too long"),
    pytest.param("exa mple.test", id="space"),
    pytest.param("a.test'); echo 1; //", id="quote injection"),
])
def test_hostile_or_unknown_host_gets_421(served: tuple[int, Path], host: str) -> None:
    port, _ = served
    response = Browser(port, host).get("/probe.php")
    assert response.status == 421, response.text
    assert response.text.startswith("Misdirected Request")
    assert len(response.text) < 200
    assert host not in response.text or not host


def test_no_map_leaves_config_php_in_charge(php: str, tmp_path: Path) -> None:
    write_tenantkit_php(tmp_path)
    (tmp_path / "probe.php").write_text(PROBE)
    with php_server(php, tmp_path, tmp_path / "php.log") as port:
        got = json.loads(Browser(port, "anything.test").get("/probe.php").text)
    assert got == {"forum": None, "FORUM": False, "cache_dir": None, "db_prefix": None,
                   "db_host": None, "base_url": None, "cookie_name": None}


@pytest.mark.parametrize(("map_text", "says"), [
    pytest.param("<?php return 42;", "is broken", id="not an array"),
    pytest.param("<?php return array('hosts' => array());", "is broken", id="no forums"),
    pytest.param("<?php return array('hosts' => array('a.test' => 'ghost'), "
                 "'forums' => array());", 'forum "ghost", which it does not define',
                 id="host to a missing forum"),
    pytest.param("<?php return array('hosts' => array('a.test' => 'f'), "
                 "'forums' => array('f' => array('db_type' => 'mysqli')));", 'has no "db_host"',
                 id="forum without keys"),
])
def test_broken_map_is_a_500_saying_what_to_do(php: str, tmp_path: Path, map_text: str,
                                               says: str) -> None:
    write_tenantkit_php(tmp_path)
    (tmp_path / "probe.php").write_text(PROBE)
    (tmp_path / "tenantkit_forums.php").write_text(map_text)
    with php_server(php, tmp_path, tmp_path / "php.log") as port:
        response = Browser(port, "a.test").get("/probe.php")
    assert response.status == 500
    assert says in response.text
    assert "tenantkit punbb-config" in response.text
    assert str(tmp_path) not in response.text
    log = (tmp_path / "php.log").read_text()
    assert says in log and f"[{tmp_path / 'tenantkit_forums.php'}]" in log


def test_missing_cache_dir_is_a_500_naming_provision(php: str, tmp_path: Path) -> None:
    settings = Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")
    sites = [_site("forum-a", ("a.test",), tmp_path / "cache")]
    write_tenantkit_php(tmp_path)
    (tmp_path / "probe.php").write_text(PROBE)
    (tmp_path / "tenantkit_forums.php").write_text(render_forum_map(build_forum_map(sites,
                                                                                    settings)))
    with php_server(php, tmp_path, tmp_path / "php.log") as port:
        response = Browser(port, "a.test").get("/probe.php")
    assert response.status == 500
    assert "tenantkit provision forum-a" in response.text
    assert str(tmp_path) not in response.text
    assert f"[{tmp_path / 'cache' / 'forum-a' / 'app'}/]" in (tmp_path / "php.log").read_text()


def test_missing_events_helper_is_a_500(php: str, tmp_path: Path) -> None:
    settings = Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")
    sites = [_site("forum-a", ("a.test",), tmp_path / "cache")]
    (tmp_path / "cache" / "forum-a" / "app").mkdir(parents=True)
    write_tenantkit_php(tmp_path)
    (tmp_path / "include" / "tenantkit-events.php").unlink()
    (tmp_path / "probe.php").write_text(PROBE)
    (tmp_path / "tenantkit_forums.php").write_text(render_forum_map(build_forum_map(sites,
                                                                                    settings)))
    with php_server(php, tmp_path, tmp_path / "php.log") as port:
        response = Browser(port, "a.test").get("/probe.php")
    assert response.status == 500
    assert "tenantkit-events.php is missing" in response.text


def test_map_named_by_environment(php: str, tmp_path: Path) -> None:
    settings = Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")
    sites = [_site("forum-a", ("a.test",), tmp_path / "cache")]
    (tmp_path / "cache" / "forum-a" / "app").mkdir(parents=True)
    www = tmp_path / "www"
    write_tenantkit_php(www)
    (www / "probe.php").write_text(PROBE)
    elsewhere = tmp_path / "etc" / "forums.php"
    elsewhere.parent.mkdir()
    elsewhere.write_text(render_forum_map(build_forum_map(sites, settings)))
    with php_server(php, www, tmp_path / "php.log",
                    env={"TENANTKIT_PUNBB_MAP": str(elsewhere)}) as port:
        assert json.loads(Browser(port, "a.test").get("/probe.php").text)["forum"] == "forum-a"
    with php_server(php, www, tmp_path / "php2.log",
                    env={"TENANTKIT_PUNBB_MAP": str(tmp_path / "nope.php")}) as port:
        response = Browser(port, "a.test").get("/probe.php")
    assert response.status == 500
    assert "does not exist" in response.text


# --- PHP picks what Python picks --------------------------------------------------------------

LOOKUP = """<?php
define('FORUM_ROOT', __DIR__.'/');
require FORUM_ROOT.'include/tenantkit.php';
require FORUM_ROOT.'include/tenantkit-events.php';
$input = json_decode(stream_get_contents(STDIN), true);
$map = include $input['map'];
$out = array();
foreach ($input['hosts'] as $raw) {
    $host = tenantkit_normalize_host($raw);
    $out[] = ($host === null) ? null : tenantkit_punbb_find_forum($map, $host);
}
echo json_encode($out);
"""

LABELS = ("a", "b", "forum", "test")
label_paths = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
patterns = st.one_of(label_paths, label_paths.map(lambda p: "*." + p),
                     label_paths.map(lambda p: "." + p), label_paths.map(lambda p: p + ".*"))
raw_hosts = st.one_of(
    label_paths,
    st.tuples(label_paths, st.sampled_from(["", ".", ":8080", ".:443"]), st.booleans()).map(
        lambda t: (t[0].upper() if t[2] else t[0]) + t[1]),
)


@pytest.fixture(scope="module")
def lookup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("punbb-lookup")
    write_tenantkit_php(root)
    (root / "lookup.php").write_text(LOOKUP)
    return root


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.dictionaries(st.sampled_from(("s1", "s2", "s3")),
                             st.lists(patterns, min_size=1, max_size=4), min_size=1),
       forums=st.sets(st.sampled_from(("s1", "s2", "s3"))),
       hosts=st.lists(raw_hosts, min_size=1, max_size=40))
def test_php_lookup_agrees_with_python(php: str, lookup_dir: Path, table: dict[str, list[str]],
                                       forums: set[str], hosts: list[str]) -> None:
    sites = [
        Site(name=name, hosts=tuple(pats), backend=Backend(type="proxy", url="http://x"),
             database=SiteDatabase(primary="mysql+pymysql://u:p@db/forums",
                                   table_prefix=f"{name}_"),
             meta={"app": "punbb", "base_url": "http://x.test"} if name in forums else {},
             cache_root=lookup_dir / name)
        for name, pats in table.items()
    ]
    forum_map = build_forum_map(sites, Settings(cache_dir=lookup_dir))
    map_file = lookup_dir / "map.php"
    map_file.write_text(render_forum_map(forum_map))
    proc = subprocess.run([php, str(lookup_dir / "lookup.php")],
                          input=json.dumps({"map": str(map_file), "hosts": hosts}),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stdout + proc.stderr
    expected = []
    for raw in hosts:
        host = normalize_host(raw)
        expected.append(forum_map.lookup(host))
    assert json.loads(proc.stdout) == expected
