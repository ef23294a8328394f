from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantkit.config import Settings, WebSettings
from tenantkit.hosts import HostIndex
from tenantkit.registry import Registry, ReloadReport
from tenantkit.sites import Site


def site_text(*hosts: str, ttl: int = 300) -> str:
    listed = ", ".join(f'"{h}"' for h in hosts)
    return (f"hosts = [{listed}]\n[backend]\ntype = \"proxy\"\nurl = \"http://127.0.0.1:8080\"\n"
            f"[cache]\nttl = {ttl}\n")


@pytest.fixture()
def cfg(tmp_path: Path) -> Settings:
    (tmp_path / "sites").mkdir()
    return Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")


def put(cfg: Settings, name: str, text: str) -> Path:
    path = cfg.sites_dir / name
    path.write_text(text)
    return path


def test_load_resolve_and_errors(cfg: Settings) -> None:
    put(cfg, "blog.toml", site_text("blog.example.org", "*.blog.example.org"))
    put(cfg, "shop.toml", site_text(".shop.example.org"))
    bad = put(cfg, "bad.toml", "hosts = [")
    put(cfg, ".hidden.toml", "garbage")
    put(cfg, "notes.txt", "garbage")
    put(cfg, ".blog.toml.x1y2.tmp", "garbage")
    registry = Registry.load(cfg)
    assert sorted(registry.sites) == ["blog", "shop"]
    assert list(registry.errors) == [bad]
    assert "invalid TOML" in registry.errors[bad]
    blog = registry.resolve("X.Blog.Example.org:443")
    assert blog is not None and blog.name == "blog"
    assert registry.resolve("shop.example.org") is registry.sites["shop"]
    assert registry.resolve("nowhere.org") is None
    assert registry.resolve("bad host") is None


def test_load_accepts_a_directory(cfg: Settings) -> None:
    put(cfg, "a.toml", site_text("a.org"))
    registry = Registry.load(str(cfg.sites_dir))
    assert list(registry.sites) == ["a"]
    assert Registry.load(cfg.sites_dir).sites["a"].hosts == ("a.org",)


def test_missing_directory_is_empty(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "nope")
    assert dict(registry.sites) == {}
    assert registry.resolve("a.org") is None


def test_default_site_from_settings(cfg: Settings) -> None:
    put(cfg, "main.toml", site_text("main.org"))
    settings = Settings(sites_dir=cfg.sites_dir, cache_dir=cfg.cache_dir,
                        web=WebSettings(unknown="main"))
    registry = Registry.load(settings)
    site = registry.resolve("unknown.org")
    assert site is not None and site.name == "main"


@pytest.mark.parametrize(
    ("environ", "trusted", "expected"),
    [
        pytest.param({"HTTP_HOST": "a.org"}, 0, "a", id="host"),
        pytest.param({"HTTP_HOST": "a.org", "HTTP_X_FORWARDED_HOST": "b.org"}, 0, "a",
                     id="untrusted forwarded ignored"),
        pytest.param({"HTTP_HOST": "lb", "HTTP_X_FORWARDED_HOST": "b.org"}, 1, "b",
                     id="trusted forwarded"),
        pytest.param({"HTTP_HOST": "lb", "HTTP_X_FORWARDED_HOST": "a.org, b.org"}, 1, "b",
                     id="rightmost hop"),
        pytest.param({"HTTP_HOST": "lb", "HTTP_X_FORWARDED_HOST": "a.org, b.org"}, 2, "a",
                     id="two hops"),
        pytest.param({"HTTP_HOST": "a..org"}, 0, None, id="invalid host"),
    ],
)
def test_resolve_request(cfg: Settings, environ: dict[str, str], trusted: int,
                         expected: str | None) -> None:
    put(cfg, "a.toml", site_text("a.org"))
    put(cfg, "b.toml", site_text("b.org"))
    site = Registry.load(cfg).resolve_request(environ, trusted_proxies=trusted)
    assert (site.name if site else None) == expected


def test_reload_report(cfg: Settings) -> None:
    put(cfg, "a.toml", site_text("a.org"))
    put(cfg, "b.toml", site_text("b.org"))
    registry = Registry.load(cfg)
    assert not registry.reload()
    put(cfg, "c.toml", site_text("c.org"))
    (cfg.sites_dir / "b.toml").unlink()
    put(cfg, "a.toml", site_text("a.org", "www.a.org"))
    report = registry.reload()
    assert report == ReloadReport(added=("c",), removed=("b",), changed=("a",), failed=())
    assert registry.resolve("www.a.org") is registry.sites["a"]
    assert registry.resolve("b.org") is None


def test_broken_file_keeps_last_good_and_logs_once(cfg: Settings,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = put(cfg, "a.toml", site_text("a.org"))
    registry = Registry.load(cfg)
    good = registry.sites["a"]
    caplog.set_level(logging.INFO, logger="tenantkit.registry")
    put(cfg, "a.toml", "\x00\x01 binary junk")
    report = registry.reload()
    assert report.failed == ("a.toml",)
    assert registry.sites["a"] is good
    assert registry.resolve("a.org") is good
    assert "NUL" in registry.errors[path]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # the error, and "keeps its last good definition"
    caplog.clear()
    registry.reload()
    registry.reload()
    assert [r for r in caplog.records if r.levelno == logging.ERROR] == []
    put(cfg, "a.toml", "hosts = 5")  # a different error: logged again
    registry.reload()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert registry.sites["a"] is good
    put(cfg, "a.toml", site_text("a.org", ttl=5))
    report = registry.reload()
    assert report.changed == ("a",)
    assert registry.sites["a"].cache.ttl == 5
    assert dict(registry.errors) == {}
    path.unlink()
    assert registry.reload().removed == ("a",)


def test_unchanged_reload_keeps_the_index(cfg: Settings) -> None:
    put(cfg, "a.toml", site_text("a.org"))
    registry = Registry.load(cfg)
    registry.reload()  # the file was racy (just written): parsed again, same Site
    index = registry.index
    put(cfg, "notes.txt", "not a site")
    registry.reload()
    assert registry.index is index
    put(cfg, "b.toml", site_text("b.org"))
    registry.reload()
    assert registry.index is not index
    assert registry.resolve("b.org") is registry.sites["b"]


def test_broken_new_file_stays_absent(cfg: Settings) -> None:
    registry = Registry.load(cfg)
    put(cfg, "a.toml", "")
    report = registry.reload()
    assert report.failed == ("a.toml",) and not report.added
    assert "a" not in registry.sites


def test_conflicts_are_reported(cfg: Settings, caplog: pytest.LogCaptureFixture) -> None:
    put(cfg, "b.toml", site_text("same.org", "b.org"))
    put(cfg, "a.toml", site_text("same.org"))
    with caplog.at_level(logging.WARNING, logger="tenantkit.registry"):
        registry = Registry.load(cfg)
    assert [(c.kept, c.dropped) for c in registry.conflicts] == [("a", ("b",))]
    assert "same.org" in caplog.text
    site = registry.resolve("same.org")
    assert site is not None and site.name == "a"


def test_unreadable_file(
    shared_dir: Path, as_unprivileged: Callable[[Callable[[], None]], None]
) -> None:
    cfg = Settings(sites_dir=shared_dir / "sites", cache_dir=shared_dir / "cache")
    cfg.sites_dir.mkdir(mode=0o755)
    put(cfg, "b.toml", site_text("b.org")).chmod(0o644)
    path = put(cfg, "a.toml", site_text("a.org"))
    path.chmod(0)

    def check() -> None:  # as an unprivileged user, for whom a mode-0 file is unreadable
        registry = Registry.load(cfg)
        assert "permissions" in registry.errors[path]
        assert registry.resolve("b.org") is registry.sites["b"]  # the others keep serving

    as_unprivileged(check)


def test_readers_never_see_half_a_snapshot(cfg: Settings) -> None:
    put(cfg, "a.toml", site_text("x.org"))
    registry = Registry.load(cfg)
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            snap = registry.snapshot
            name = snap.index.lookup("x.org")
            if name is not None and name not in snap.sites:
                bad.append(name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            (cfg.sites_dir / f"{'ab'[i % 2]}.toml").unlink()
            put(cfg, f"{'ba'[i % 2]}.toml", site_text("x.org"))
            registry.reload()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert bad == []


# --- property: incremental reloads equal a load from scratch ---------------------------

NAMES = ["a", "b", "c"]
CONTENTS = [
    site_text("a.org"),
    site_text("b.org", "*.b.org"),
    site_text("shared.org", ttl=1),
    site_text("shared.org", ttl=2),
    "hosts = [",                 # garbage
    "",                          # empty
    "\x00\x01\x02",              # binary
    'hosts = ["x..y"]\n[backend]\ntype = "proxy"\nurl = "http://h"\n',  # bad host
]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(NAMES), st.sampled_from(CONTENTS)),
        st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just("")),
        st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
        st.tuples(st.just("reload"), st.just(""), st.just("")),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_reloads_equal_fresh_load_with_last_good(steps: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Settings(sites_dir=Path(tmp), cache_dir=Path(tmp) / "cache")
        registry = Registry.load(cfg)
        model: dict[str, Site] = {}

        def check() -> None:
            registry.reload()
            fresh = Registry.load(cfg)
            present = {p.stem for p in cfg.sites_dir.glob("*.toml")}
            expected = {n: s for n, s in model.items() if n in present}
            expected.update(fresh.sites)
            assert dict(registry.sites) == expected
            assert dict(registry.errors) == dict(fresh.errors)
            reference = HostIndex({n: s.hosts for n, s in expected.items()})
            for host in ("a.org", "b.org", "x.b.org", "shared.org", "none.org"):
                site = registry.resolve(host)
                assert (site.name if site else None) == reference.lookup(host)
            model.clear()
            model.update(expected)

        for op, x, y in steps:
            src = cfg.sites_dir / f"{x}.toml"
            if op == "write":
                src.write_text(y)
            elif op == "delete":
                src.unlink(missing_ok=True)
            elif op == "rename":
                if src.exists():
                    src.rename(cfg.sites_dir / f"{y}.toml")
            else:
                check()
        check()


def test_one_owner_per_host_for_the_registry_and_host_links(cfg: Settings) -> None:
    from tenantkit import layout
    from tenantkit.hosts import claim_owner, host_claims, pattern_key
    from tenantkit.web.hostlinks import HostLinks

    put(cfg, "b.toml", site_text("same.org", "b.org"))
    put(cfg, "a.toml", site_text("same.org"))
    registry = Registry.load(cfg, log_errors=False)
    claims = host_claims({n: s.hosts for n, s in registry.sites.items()})
    assert claim_owner(claims[pattern_key("same.org")]) == "a"
    assert (registry.owner("SAME.org:80"), registry.owner("b.org"),
            registry.owner("nobody.org")) == ("a", "b", None)
    links = HostLinks(cfg.cache_dir)
    for site, host in (("b", "same.org"), ("b", "b.org"), ("b", "nobody.org")):
        links.ensure(site, host)
    links.prune(registry.owner)  # same.org is a's, nobody.org nobody's: both links go
    assert sorted(p.name for p in layout.hosts_dir(cfg.cache_dir).iterdir()) == ["b.org"]
