from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantkit.cache.events import (
    CommentChanged,
    CommentPosted,
    Event,
    PostDeleted,
    PostEdited,
    Purge,
    PurgeAction,
    SiteChanged,
    from_json,
    purge_action,
    to_json,
)
from tenantkit.errors import BusError, MalformedEvent

README_EXAMPLE = """{"v": 1, "type": "comment_posted", "site": "blog", "post_id": 42,
 "approved": true, "terms": [7, 9], "author": 3, "paths": [], "tags": [], "host": null,
 "gtid": "0-1-1234", "id": "6f1c...", "ts": 1764090000.25, "origin": "php"}"""


def test_readme_example_parses() -> None:
    event = from_json(README_EXAMPLE)
    assert event == CommentPosted("blog", 42, True, terms=(7, 9), gtid="0-1-1234")
    assert (event.id, event.ts, event.origin) == ("6f1c...", 1764090000.25, "php")


def test_wire_form_has_every_field() -> None:
    data = json.loads(to_json(PostEdited("blog", 7, (1, 2), 3, gtid="0-1-9")))
    assert data == {
        "v": 1, "type": "post_edited", "site": "blog", "post_id": 7, "approved": True,
        "terms": [1, 2], "author": 3, "paths": [], "tags": [], "host": None, "all": False,
        "gtid": "0-1-9", "id": data["id"], "ts": data["ts"], "origin": "python",
    }


sites = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
ints = st.integers(min_value=0, max_value=2**53)
gtids = st.none() | st.from_regex(r"[0-9]{1,3}-[0-9]{1,3}-[0-9]{1,9}", fullmatch=True)
paths = st.lists(st.from_regex(r"/[a-z0-9/]{0,20}", fullmatch=True), max_size=3).map(tuple)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(CommentPosted, sites, st.none() | ints, st.booleans(), gtid=gtids),
    st.builds(CommentChanged, sites, st.none() | ints, st.booleans(), gtid=gtids),
    st.builds(PostEdited, sites, st.none() | ints, st.lists(ints, max_size=3).map(tuple),
              st.none() | ints, gtid=gtids),
    st.builds(PostDeleted, sites, st.none() | ints, gtid=gtids),
    st.builds(SiteChanged, sites, gtid=gtids),
    st.builds(Purge, sites, paths=paths,
              tags=st.lists(st.text(min_size=1, max_size=10), max_size=3).map(tuple),
              host=st.none() | st.just("blog.example.org"), all=st.booleans(), gtid=gtids),
)


@given(events)
def test_round_trip(event: Event) -> None:
    again = from_json(to_json(event))
    assert again == event
    assert (again.id, again.ts, again.origin) == (event.id, event.ts, event.origin)
    assert from_json(to_json(event).encode()) == event


def _with(**changes: Any) -> str:
    data = json.loads(README_EXAMPLE)
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param("", "not valid JSON", id="empty"),
    pytest.param("{", "not valid JSON", id="truncated"),
    pytest.param("[1]", "expected a JSON object", id="array"),
    pytest.param(b"\xff\xfe", "not UTF-8", id="not utf-8"),
    pytest.param(b"{" + b" " * 70000 + b"}", "more than", id="too big"),
    pytest.param(_with(v=...), 'field "v" is missing', id="no version"),
    pytest.param(_with(type=...), 'field "type" is missing', id="no type"),
    pytest.param(_with(site=...), 'field "site" is missing', id="no site"),
    pytest.param(_with(v=2), 'field "v"', id="future version"),
    pytest.param(_with(v=True), 'field "v"', id="bool version"),
    pytest.param(_with(type="comment_deleted"), 'field "type": expected one of', id="bad type"),
    pytest.param(_with(type=5), 'field "type"', id="type not a string"),
    pytest.param(_with(site="../etc"), 'field "site"', id="hostile site"),
    pytest.param(_with(site="Blog"), 'field "site"', id="uppercase site"),
    pytest.param(_with(post_id="42"), 'field "post_id": expected an integer', id="string id"),
    pytest.param(_with(post_id=True), 'field "post_id"', id="bool id"),
    pytest.param(_with(approved="yes"), 'field "approved"', id="string approved"),
    pytest.param(_with(type="post_edited", terms=["7"]), 'field "terms"', id="string terms"),
    pytest.param(_with(gtid=12), 'field "gtid"', id="numeric gtid"),
    pytest.param(_with(ts="now"), 'field "ts"', id="string ts"),
    pytest.param(_with(type="purge", paths=["relative"]), 'field "paths"', id="relative path"),
    pytest.param(_with(type="purge", paths="/"), 'field "paths": expected a list',
                 id="paths not a list"),
    pytest.param(_with(type="purge", all=1), 'field "all"', id="all not bool"),
    pytest.param(_with(type="purge", tags=[""]), 'field "tags"', id="empty tag"),
    pytest.param(_with(type="purge", tags=["x" * 201]), 'field "tags"', id="long tag"),
])
def test_malformed_events_say_what_is_wrong(raw: str | bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message) as info:
        from_json(raw)
    assert isinstance(info.value, BusError)


def test_unknown_fields_are_ignored() -> None:
    assert from_json(_with(future_field={"x": 1})) == from_json(README_EXAMPLE)


def test_constructing_with_a_bad_site_fails() -> None:
    with pytest.raises(MalformedEvent, match="site"):
        SiteChanged("../x")


@pytest.mark.parametrize(("event", "policy", "expected"), [
    pytest.param(CommentPosted("b", 1, True), "site", PurgeAction(flush=True), id="site comment"),
    pytest.param(CommentPosted("b", 1, False), "site", PurgeAction(), id="site unapproved"),
    pytest.param(CommentPosted("b", 1, False), "targeted", PurgeAction(), id="unapproved"),
    pytest.param(CommentChanged("b", 1, False), "targeted", PurgeAction(), id="spam stays spam"),
    pytest.param(CommentPosted("b", 1, True), "targeted",
                 PurgeAction(tags=("post:1", "home")), id="targeted comment"),
    pytest.param(PostEdited("b", 5, (7, 9), 3), "targeted",
                 PurgeAction(tags=("post:5", "home", "feed", "term:7", "term:9", "author:3")),
                 id="targeted edit"),
    pytest.param(PostDeleted("b", 5), "targeted", PurgeAction(tags=("post:5", "home", "feed")),
                 id="targeted delete"),
    pytest.param(PostEdited("b", 5), "site", PurgeAction(flush=True), id="site edit"),
    pytest.param(PostEdited("b", None), "targeted", PurgeAction(flush=True), id="unknown post"),
    pytest.param(SiteChanged("b"), "targeted", PurgeAction(flush=True), id="site changed"),
    pytest.param(Purge("b", paths=("/",), host="h.org"), "site",
                 PurgeAction(paths=("/",), host="h.org"), id="explicit paths"),
    pytest.param(Purge("b", all=True), "targeted", PurgeAction(flush=True), id="explicit all"),
])
def test_purge_policy(event: Event, policy: str, expected: PurgeAction) -> None:
    assert purge_action(event, policy) == expected  # type: ignore[arg-type]


def test_home_without_comment_counts() -> None:
    action = purge_action(CommentPosted("b", 1, True), "targeted", home_shows_comments=False)
    assert action.tags == ("post:1",)
