"""One tag vocabulary: tenantkit/cache/tags.py, the PHP constants generated from it, the
site-wide tag for pages without tags, and the events' tags per app."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tenantkit.cache import tags
from tenantkit.cache.caches import site_page_cache
from tenantkit.cache.events import (
    CommentChanged,
    CommentPosted,
    PostDeleted,
    PostEdited,
    PurgeAction,
    from_json,
    purge_action,
    to_json,
)
from tenantkit.cache.purge import PurgeResult, action_for, purge
from tenantkit.config import Settings
from tenantkit.export.tags import main, php_block, sync_php
from tenantkit.registry import Registry
from tenantkit.sites import Site

HELPER = Path(__file__).resolve().parents[2] / "contrib" / "tenantkit-events.php"
HOST = "blog.example.org"


@pytest.mark.parametrize(("kind", "number", "expected"), [
    pytest.param("post", 42, "post:42", id="post"),
    pytest.param("term", 7, "term:7", id="term"),
    pytest.param("author", 3, "author:3", id="author"),
    pytest.param("topic", 5, "topic:5", id="punbb topic"),
    pytest.param("forum", 2, "forum:2", id="punbb forum"),
])
def test_numbered_tags(kind: str, number: int, expected: str) -> None:
    assert tags.tag(kind, number) == expected


@pytest.mark.parametrize("kind", ["home", "page", "", "post:"])
def test_a_kind_outside_the_vocabulary_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="tag kind"):
        tags.tag(kind, 1)


def test_words_and_untagged() -> None:
    assert {tags.HOME, tags.FEED, tags.INDEX, tags.SITE} == tags.WORDS
    assert tags.is_untagged(()) and tags.is_untagged((tags.SITE,))
    assert not tags.is_untagged((tags.SITE, "post:1"))


def test_the_committed_php_block_is_what_the_vocabulary_generates() -> None:
    assert sync_php(HELPER, check=True), (
        "contrib/tenantkit-events.php's TENANTKIT_TAG_* constants differ from "
        "tenantkit/cache/tags.py: run python -m tenantkit.export.tags contrib/tenantkit-events.php")
    block = php_block()
    for kind in tags.KINDS:
        value = f"{kind.name}:" if kind.numbered else kind.name
        assert f"define('TENANTKIT_TAG_{kind.name.upper()}', '{value}');" in block


def test_check_fails_on_a_hand_edited_block_and_a_rewrite_fixes_it(tmp_path: Path) -> None:
    copy = tmp_path / "tenantkit-events.php"
    shutil.copy(HELPER, copy)
    copy.write_text(copy.read_text().replace("'index'", "'home'", 1))
    assert main(["--check", str(copy)]) == 1
    assert main([str(copy)]) == 0
    assert copy.read_text() == HELPER.read_text()
    plain = tmp_path / "x.php"
    plain.write_text("<?php\n")
    assert main([str(plain)]) == 2


# --- the site-wide tag ------------------------------------------------------------------------

def _site(tmp_path: Path, meta: str = "") -> tuple[Settings, Site]:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "blog.toml").write_text(
        f'hosts = ["{HOST}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        f'[cache]\npolicy = "targeted"\n{meta}')
    settings = Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")
    return settings, Registry.load(settings).sites["blog"]


@pytest.mark.parametrize("action", [
    pytest.param(PurgeAction(tags=("post:9",)), id="by a tag no page has"),
    pytest.param(PurgeAction(paths=("/elsewhere/",)), id="by a path"),
])
def test_a_page_without_tags_goes_stale_on_every_purge(tmp_path: Path,
                                                       action: PurgeAction) -> None:
    _, site = _site(tmp_path)
    cache = site_page_cache(site)
    assert cache.put(HOST, "/untagged/", b"u")
    assert cache.put(HOST, "/tagged/", b"t", tags=("post:1",))
    assert cache.get(HOST, "/untagged/").tags == (tags.SITE,)  # type: ignore[union-attr]
    result = purge(cache, site, action)
    assert result.pages >= 1
    untagged, tagged = cache.get(HOST, "/untagged/"), cache.get(HOST, "/tagged/")
    assert untagged is None or untagged.stale
    assert tagged is not None and not tagged.stale


def test_a_flush_is_still_a_flush(tmp_path: Path) -> None:
    _, site = _site(tmp_path)
    cache = site_page_cache(site)
    cache.put(HOST, "/", b"x")
    assert purge(cache, site, PurgeAction(flush=True)) == PurgeResult(
        "blog", flushed=True, generation="g2")


# --- what events purge, per app ---------------------------------------------------------------

def test_punbb_events_purge_topic_forum_and_index(tmp_path: Path) -> None:
    _, site = _site(tmp_path, '[meta]\napp = "punbb"\n')
    for event in (CommentPosted("blog", 5, True, terms=(2,)), CommentChanged("blog", 5, True,
                  terms=(2,)), PostEdited("blog", 5, terms=(2,)), PostDeleted("blog", 5,
                                                                           terms=(2,))):
        assert action_for(site, event) == PurgeAction(tags=("topic:5", "forum:2", "index"))
    moved = PostEdited("blog", 5, terms=(3, 2))
    assert action_for(site, moved).tags == ("topic:5", "forum:3", "forum:2", "index")
    # A topic whose forum nobody named: its listing cannot be targeted, so everything goes.
    assert action_for(site, CommentPosted("blog", 5, True)) == PurgeAction(flush=True)
    assert action_for(site, CommentPosted("blog", 5, False, terms=(2,))) == PurgeAction()


def test_wordpress_events_keep_their_tags(tmp_path: Path) -> None:
    _, site = _site(tmp_path)
    assert action_for(site, CommentPosted("blog", 4, True)).tags == ("post:4", "home")
    assert action_for(site, PostEdited("blog", 4, terms=(7,), author=2)).tags == (
        "post:4", "home", "feed", "term:7", "author:2")
    assert purge_action(CommentPosted("blog", 4, True, terms=(7,)), "targeted").tags == (
        "post:4", "home")


def test_comment_events_carry_terms_on_the_wire() -> None:
    event = CommentPosted("forum", 5, True, terms=(2,), gtid="0-1-9")
    assert from_json(to_json(event)) == event
    assert from_json('{"v": 1, "type": "comment_changed", "site": "f", "post_id": 5, '
                     '"terms": [2, 3]}') == CommentChanged("f", 5, True, terms=(2, 3))


# --- tenantkit check --------------------------------------------------------------------------

def test_check_warns_about_a_targeted_site_whose_pages_carry_no_tags(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tenantkit.cli import cli

    settings, site = _site(tmp_path)
    config = tmp_path / "tenantkit.toml"
    config.write_text(f'sites_dir = "{settings.sites_dir}"\ncache_dir = "{settings.cache_dir}"\n')
    cache = site_page_cache(site)
    cache.put(HOST, "/tagged/", b"t", tags=("post:1",))

    def check() -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["--config", str(config), "check", "--offline"])
        return result.exit_code, result.output

    code, output = check()
    assert code == 0 and "carry no tags" not in output, output
    cache.put(HOST, "/untagged/", b"u")
    code, output = check()
    assert code == 0, output
    assert 'site blog: policy = "targeted", but 1 of its 2 most recent cached pages carry no ' \
        "tags" in output
    assert "contrib/tenantkit-tags.php" in output


def test_under_the_site_policy_untagged_pages_stay_untagged(tmp_path: Path) -> None:
    _, site = _site(tmp_path)
    site = dataclasses.replace(site, cache=dataclasses.replace(site.cache, policy="site"))
    cache = site_page_cache(site)
    cache.put(HOST, "/", b"x")
    assert cache.get(HOST, "/").tags == ()  # type: ignore[union-attr]
