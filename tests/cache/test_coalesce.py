"""The Coalescer: what merges, and when a merged purge is due."""

from __future__ import annotations

import pytest

from tenantkit.cache.coalesce import Coalescer
from tenantkit.cache.events import PurgeAction


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _merged(window: float, *actions: tuple[str, PurgeAction]) -> tuple[Clock, Coalescer]:
    clock = Clock()
    coalescer = Coalescer(window, clock=clock)
    for site, action in actions:
        coalescer.add(site, action)
    return clock, coalescer


@pytest.mark.parametrize(("actions", "expected"), [
    pytest.param([PurgeAction(tags=("post:1", "home")), PurgeAction(tags=("post:2", "home"))],
                 [PurgeAction(tags=("post:1", "home", "post:2"))], id="tags united"),
    pytest.param([PurgeAction(tags=("post:1",)), PurgeAction(flush=True),
                  PurgeAction(paths=("/a/",), host="a.test")],
                 [PurgeAction(flush=True)], id="a flush subsumes everything"),
    pytest.param([PurgeAction(paths=("/a/",), host="a.test"),
                  PurgeAction(paths=("/b/",), host="b.test"),
                  PurgeAction(paths=("/c/",), host="a.test", tags=("home",))],
                 [PurgeAction(paths=("/a/", "/c/"), host="a.test", tags=("home",)),
                  PurgeAction(paths=("/b/",), host="b.test")], id="paths kept per host"),
    pytest.param([PurgeAction(paths=("/a/",), host="a.test"),
                  PurgeAction(paths=("/a/", "/z/"), host=None)],
                 [PurgeAction(paths=("/a/", "/z/"), host=None)],
                 id="a path of every host covers the same path of one host"),
])
def test_purges_of_one_site_merge(actions: list[PurgeAction],
                                  expected: list[PurgeAction]) -> None:
    clock, coalescer = _merged(0.25, *(("blog", a) for a in actions))
    assert coalescer.take_due() == []  # the window is still open
    clock.now += 0.25
    [merged] = coalescer.take_due()
    assert merged.actions() == expected
    assert len(merged.requests) == len(actions)
    assert coalescer.take_due() == [] and len(coalescer) == 0


def test_sites_do_not_merge_and_window_is_counted_from_the_first() -> None:
    clock, coalescer = _merged(1.0, ("blog", PurgeAction(flush=True)))
    clock.now += 0.9
    coalescer.add("news", PurgeAction(flush=True))
    coalescer.add("blog", PurgeAction(tags=("x",)))  # joins blog's open window
    clock.now += 0.1
    [blog] = coalescer.take_due()
    assert blog.site == "blog" and len(blog.requests) == 2
    assert coalescer.next_due() == pytest.approx(clock.now + 0.9)
    clock.now += 0.9
    assert [m.site for m in coalescer.take_due()] == ["news"]


def test_window_zero_merges_nothing() -> None:
    _, coalescer = _merged(0.0, ("blog", PurgeAction(tags=("a",))),
                           ("blog", PurgeAction(tags=("b",))))
    assert [m.actions() for m in coalescer.take_due()] == [[PurgeAction(tags=("a",))],
                                                          [PurgeAction(tags=("b",))]]


def test_everything_is_taken_on_stop() -> None:
    _, coalescer = _merged(5.0, ("blog", PurgeAction(tags=("a",))))
    assert coalescer.take_due() == []
    assert [m.site for m in coalescer.take_due(everything=True)] == ["blog"]
