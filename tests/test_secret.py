"""Passwords in URLs are masked by construction, whatever characters they hold."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import make_url

from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.errors import SiteFileError
from tenantkit.secret import MASK, SecretURL, mask_url
from tenantkit.sites import Backend, SiteDatabase, load_site


@pytest.mark.parametrize(("url", "masked"), [
    pytest.param("mysql+pymysql://app:s3cret@db/app", f"mysql+pymysql://app:{MASK}@db/app",
                 id="plain"),
    pytest.param("mysql://app:p@ss@db/app", f"mysql://app:{MASK}@db/app", id="@ in password"),
    pytest.param("mysql://app:p ss@db", f"mysql://app:{MASK}@db", id="space in password"),
    pytest.param("mysql://app:p/s?s@db/x", f"mysql://app:{MASK}@db/x", id="/ and ? in password"),
    pytest.param("mysql://app:'\"x@db", f"mysql://app:{MASK}@db", id="quotes"),
    pytest.param("redis://:pw@127.0.0.1:6379/0", f"redis://:{MASK}@127.0.0.1:6379/0",
                 id="password only"),
    pytest.param("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", id="no password"),
    pytest.param("mysql://app@db/x?ssl=a:b@c", "mysql://app@db/x?ssl=a:b@c", id="user only"),
    pytest.param("a mysql://u:p@h/x, redis://:q@r/0.", f"a mysql://u:{MASK}@h/x, "
                 f"redis://:{MASK}@r/0.", id="two URLs in a message"),
    pytest.param("mysql://u:p@h/x: denied for 'u'@'10.0.0.1'",
                 f"mysql://u:{MASK}@h/x: denied for 'u'@'10.0.0.1'", id="server's message"),
    pytest.param("redis://h:6379/0", "redis://h:6379/0", id="port, no user"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(masked) == masked
    if " " not in url:
        assert str(SecretURL(url)) == masked


def test_secret_url_masks_every_way_it_is_shown(caplog: pytest.LogCaptureFixture) -> None:
    url = SecretURL("mysql://app:p@ss word@db/blog")
    shown = f"mysql://app:{MASK}@db/blog"
    assert str(url) == f"{url}" == f"{url:s}" == "%s" % url == shown  # noqa: UP031
    assert repr(url) == repr(shown)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("primary %s %r", url, url)
    assert "ss word" not in caplog.text and MASK in caplog.text
    # What drivers and parsers see is the real URL.
    assert url == "mysql://app:p@ss word@db/blog"
    assert url.reveal() == "mysql://app:p@ss word@db/blog"
    assert type(url.reveal()) is str
    assert url + "?x=1" == "mysql://app:p@ss word@db/blog?x=1"
    assert SecretURL(url).reveal() == url.reveal()  # wrapping again keeps the password


def test_settings_and_sites_hold_secret_urls() -> None:
    settings = Settings(database=DatabaseSettings(primary="mysql://a:pw1@h/d",
                                                  replicas=("mysql://a:pw2@r/d",)),
                        bus=BusSettings(redis_url="redis://:pw3@h:6379/0"))
    db = SiteDatabase(primary="mysql://a:pw4@h/d", replicas=("mysql://a:pw5@r/d",))
    backend = Backend(type="proxy", url="http://u:pw6@127.0.0.1:8080")
    for value in (settings.database.primary, *settings.database.replicas,
                  settings.bus.redis_url, db.primary, *db.replicas, backend.url):
        assert isinstance(value, SecretURL)
    text = f"{settings!r} {db!r} {backend!r} {settings.database.primary}"
    assert not any(f"pw{n}" in text for n in range(1, 7)), text
    assert make_url(settings.database.primary).password == "pw1"


def test_site_file_error_masks_an_odd_password(tmp_path: Path) -> None:
    (tmp_path / "blog.toml").write_text(
        'hosts = ["blog.example.org"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[database]\nprimary = "mysql://app:p@ss word@db/blog"\nreplicas = "mysql://x"\n')
    with pytest.raises(SiteFileError) as info:
        load_site(tmp_path / "blog.toml", Settings(sites_dir=tmp_path))
    assert "ss word" not in str(info.value)
