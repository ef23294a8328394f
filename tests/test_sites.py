from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomli_w

from tenantkit.config import CacheSettings, Settings
from tenantkit.errors import SiteFileError
from tenantkit.sites import (
    MAX_SITE_FILE_BYTES,
    Backend,
    InvalidSiteName,
    load_site,
    parse_backend_spec,
    site_document,
    validate_name,
)

GOOD = """\
hosts = ["Blog.Example.org", "*.blog.example.org", "blog.example.org"]

[backend]
type = "proxy"
url = "http://127.0.0.1:8080"

[database]
primary = "mysql+tenantkit://app:s3cret@db1/blog"
replicas = ["mysql+pymysql://app:s3cret@127.0.0.1/blog"]
table_prefix = "wp_"

[cache]
ttl = 60
policy = "targeted"

[meta]
owner = "team"
nested = { a = 1 }
"""


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "sites").mkdir()
    return Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache",
                    cache=CacheSettings(stale_seconds=7))


def write(settings: Settings, name: str, text: str | bytes) -> Path:
    path = settings.sites_dir / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_load_good_site(settings: Settings) -> None:
    site = load_site(write(settings, "blog.toml", GOOD), settings)
    assert site.name == "blog"
    assert site.hosts == ("blog.example.org", "*.blog.example.org")  # normalised, deduplicated
    assert site.backend == Backend(type="proxy", url="http://127.0.0.1:8080")
    assert site.database.table_prefix == "wp_"
    assert site.cache.ttl == 60
    assert site.cache.policy == "targeted"
    assert site.cache.stale_seconds == 7  # default from Settings
    assert site.cache.bypass_cookies == settings.cache.bypass_cookies
    assert site.meta == {"owner": "team", "nested": {"a": 1}}
    assert site.cache_root == settings.cache_dir / "blog"
    assert site.pages_dir == settings.cache_dir / "blog" / "pages"
    assert "s3cret" not in repr(site)
    assert "********" in repr(site)


def test_wsgi_backend(settings: Settings) -> None:
    text = 'hosts = ["a.org"]\n[backend]\ntype = "wsgi"\napp = "my.app:make_app"\n'
    site = load_site(write(settings, "a.toml", text), settings)
    assert site.backend == Backend(type="wsgi", app="my.app:make_app")


def test_round_trip_through_site_document(settings: Settings) -> None:
    site = load_site(write(settings, "blog.toml", GOOD), settings)
    again = write(settings, "blog.toml", tomli_w.dumps(site_document(site, settings)))
    assert load_site(again, settings) == site


BACKEND = '\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:1"\n'


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        pytest.param("blog.toml", b"", "empty", id="empty file"),
        pytest.param("blog.toml", b"  \n\n", "empty", id="blank file"),
        pytest.param("blog.toml", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8", id="binary"),
        pytest.param("blog.toml", b"hosts = [\x00]", "NUL", id="nul byte"),
        pytest.param("blog.toml", b"x" * (MAX_SITE_FILE_BYTES + 10), "larger than", id="huge"),
        pytest.param("blog.toml", b"hosts = [", "invalid TOML", id="garbage"),
        pytest.param("blog.toml", BACKEND.encode(), 'key "hosts": missing', id="no hosts"),
        pytest.param("blog.toml", b'hosts = "a.org"' + BACKEND.encode(),
                     "write hosts = ['a.org']", id="hosts as a string"),
        pytest.param("blog.toml", b"hosts = []" + BACKEND.encode(), "non-empty", id="no host"),
        pytest.param("blog.toml", b"hosts = [1]" + BACKEND.encode(), "list of strings",
                     id="host not a string"),
        pytest.param("blog.toml", b'hosts = ["a..b"]' + BACKEND.encode(), 'hosts[0]',
                     id="bad host"),
        pytest.param("blog.toml", b'hosts = ["ok.org", "www.*.org"]' + BACKEND.encode(),
                     "whole label", id="bad wildcard"),
        pytest.param("blog.toml", b'hosts = ["a.org"]', 'table "backend": missing',
                     id="no backend"),
        pytest.param("blog.toml", b'hosts = ["a.org"]\n[backend]\ntype = "fastcgi"',
                     '"wsgi" or "proxy"', id="bad backend type"),
        pytest.param("blog.toml", b'hosts = ["a.org"]\n[backend]\ntype = "wsgi"\napp = "x"',
                     '"module:attr"', id="bad wsgi app"),
        pytest.param("blog.toml", b'hosts = ["a.org"]\n[backend]\ntype = "proxy"\nurl = "ftp://x"',
                     "http:// or https://", id="bad upstream url"),
        pytest.param("blog.toml",
                     b'hosts = ["a.org"]\n[backend]\ntype = "proxy"\nurl = "http://x"\napp = "a:b"',
                     "only for type", id="app on a proxy"),
        pytest.param("blog.toml", b'hosts = ["a.org"]\nport = 80' + BACKEND.encode(),
                     'key "port": unknown key', id="unknown top key"),
        pytest.param("blog.toml", b'hosts = ["a.org"]' + BACKEND.encode() + b"\n[cache]\nttll = 1",
                     'key "cache.ttll": unknown key', id="unknown cache key"),
        pytest.param("blog.toml", b'hosts = ["a.org"]' + BACKEND.encode() + b'\n[cache]\nttl = "1"',
                     "whole number", id="ttl as string"),
        pytest.param("blog.toml", b'hosts = ["a.org"]' + BACKEND.encode() + b"\n[cache]\nttl = -1",
                     "from 0 to", id="negative ttl"),
        pytest.param("blog.toml",
                     b'hosts = ["a.org"]' + BACKEND.encode() + b'\n[cache]\nenabled = "yes"',
                     "true or false", id="enabled as string"),
        pytest.param("blog.toml",
                     b'hosts = ["a.org"]' + BACKEND.encode() + b'\n[cache]\npolicy = "all"',
                     '"site" or "targeted"', id="bad policy"),
        pytest.param("blog.toml",
                     b'hosts = ["a.org"]' + BACKEND.encode()
                     + b'\n[database]\nprimary = "db1:pw@x"',
                     "database URL", id="bad database url"),
        pytest.param("blog.toml",
                     b'hosts = ["a.org"]' + BACKEND.encode()
                     + b'\n[database]\ntable_prefix = "wp; DROP"',
                     "letters, digits", id="bad table prefix"),
        pytest.param("blog.toml", b'hosts = ["a.org"]\nbackend = "proxy"', "a table",
                     id="backend not a table"),
        pytest.param("blog.toml", b'name = "other"\nhosts = ["a.org"]' + BACKEND.encode(),
                     "stem", id="name differs from the file"),
        pytest.param("Blog.toml", b'hosts = ["a.org"]' + BACKEND.encode(), "invalid site name",
                     id="uppercase file name"),
        pytest.param("-x.toml", b'hosts = ["a.org"]' + BACKEND.encode(), "invalid site name",
                     id="leading hyphen file name"),
        pytest.param("blog.txt", b'hosts = ["a.org"]' + BACKEND.encode(), "must end in .toml",
                     id="wrong suffix"),
    ],
)
def test_bad_site_files(settings: Settings, filename: str, content: bytes, message: str) -> None:
    path = write(settings, filename, content)
    with pytest.raises(SiteFileError) as info:
        load_site(path, settings)
    text = str(info.value)
    assert text.startswith(f"site file {path}: ")
    assert message.replace("'", '"') in text.replace("'", '"')
    assert len(text) < 600


def test_password_never_in_error(settings: Settings) -> None:
    path = write(settings, "a.toml", 'hosts = ["a.org"]' + BACKEND
                 + '\n[database]\nreplicas = ["mysql://u:s3cret@h/x", 5]')
    with pytest.raises(SiteFileError) as info:
        load_site(path, settings)
    assert "s3cret" not in str(info.value)


def test_missing_and_directory(settings: Settings) -> None:
    with pytest.raises(SiteFileError, match="not found"):
        load_site(settings.sites_dir / "gone.toml", settings)
    (settings.sites_dir / "dir.toml").mkdir()
    with pytest.raises(SiteFileError, match="directory"):
        load_site(settings.sites_dir / "dir.toml", settings)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../x", id="dotdot"),
        pytest.param("a/b", id="slash"),
        pytest.param("A", id="uppercase"),
        pytest.param("-a", id="leading hyphen"),
        pytest.param("", id="empty"),
        pytest.param("a" * 64, id="64 characters"),
        pytest.param("a.b", id="dot"),
        pytest.param("a\x00", id="nul"),
        pytest.param("ü", id="unicode"),
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidSiteName, match=re.escape("invalid site name")):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "0", "shop-eu", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("wsgi:app.wsgi:application", Backend(type="wsgi", app="app.wsgi:application"),
                     id="wsgi"),
        pytest.param("http://127.0.0.1:8080", Backend(type="proxy", url="http://127.0.0.1:8080"),
                     id="upstream"),
    ],
)
def test_parse_backend_spec(spec: str, expected: Backend) -> None:
    assert parse_backend_spec(spec) == expected


@pytest.mark.parametrize("spec", ["wsgi:", "wsgi:nocolon", "ftp://x", "127.0.0.1:80", ""])
def test_parse_backend_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid backend"):
        parse_backend_spec(spec)


def test_backend_repr_masks_password() -> None:
    assert "pw" not in repr(Backend(type="proxy", url="http://u:pw@127.0.0.1:1"))
