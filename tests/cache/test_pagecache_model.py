"""PageCache against a plain dict model, with a fake clock.

The model: each generation holds at most one copy of a key (fresh, or stale with the time it
was purged); a lookup takes the current generation's copy, else the newest copy among the
previous generations flushed less than STALE seconds ago. A render a purge overtook is kept
as a stale copy (issue 23)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from tenantkit.cache.pagecache import FillTicket, PageCache

TTL = 50
STALE = 10
HOSTS = ["a.example", "b.example"]
PATHS = ["/", "/x/", "/x/y/", "/z", "/../"]
QUERIES = ["", "p=1"]
TAGS = ["post:1", "post:2", "home", "feed"]

keys = st.tuples(st.sampled_from(HOSTS), st.sampled_from(PATHS), st.sampled_from(QUERIES))


@dataclass
class Entry:
    body: bytes
    tags: frozenset[str]
    created: float
    generation: int
    purged: float | None = None


def _served(entry: Entry, purged: float | None, now: float) -> tuple[bytes, bool] | None:
    end = entry.created + TTL
    if purged is not None:
        end = min(end, purged)
    if now < end:
        return entry.body, False
    if now < end + STALE:
        return entry.body, True
    return None


@dataclass
class Model:
    now: float = 1000.0
    generation: int = 1
    #: key -> generation -> the key's copy in that generation
    pages: dict[tuple[str, str, str], dict[int, Entry]] = field(default_factory=dict)
    #: generation -> when it was flushed
    flushed: dict[int, float] = field(default_factory=dict)
    # Tags a key was ever stored with in the current generation: the index over-purges.
    indexed: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    # Every purge so far, in order: ("tag", tag) / ("path", (host, path)) / ("flush", None).
    purges: list[tuple[str, object]] = field(default_factory=list)

    def expect(self, key: tuple[str, str, str]) -> tuple[bytes, bool] | None:
        copies = self.pages.get(key, {})
        current = copies.get(self.generation)
        if current is not None:
            return _served(current, current.purged, self.now)
        for generation in range(self.generation - 1, 0, -1):
            flushed = self.flushed[generation]
            if self.now >= flushed + STALE:
                return None
            entry = copies.get(generation)
            if entry is not None:
                purged = flushed if entry.purged is None else min(flushed, entry.purged)
                return _served(entry, purged, self.now)
        return None

    def purge(self, key: tuple[str, str, str]) -> None:
        entry = self.pages.get(key, {}).get(self.generation)
        if entry is not None and entry.purged is None:
            entry.purged = self.now


class PageCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tk-model-"))
        self.model = Model()
        self.cache = PageCache(self.dir / "pages", ttl=TTL, stale_seconds=STALE,
                               clock=lambda: self.model.now)
        self.counter = 0
        self.open_tickets: list[FillTicket] = []

    def teardown(self) -> None:
        for ticket in self.open_tickets:
            ticket.release()
        shutil.rmtree(self.dir, ignore_errors=True)

    tickets = Bundle("tickets")

    @rule(target=tickets, key=keys)
    def begin_fill(self, key: tuple[str, str, str]) -> tuple[tuple[str, str, str], FillTicket,
                                                              int]:
        host, path, query = key
        ticket = self.cache.begin_fill(host, path, query)
        self.open_tickets.append(ticket)
        return key, ticket, len(self.model.purges)

    @rule(held=consumes(tickets), tags=st.frozensets(st.sampled_from(TAGS), max_size=2))
    def put_with_ticket(self, held: tuple[tuple[str, str, str], FillTicket, int],
                        tags: frozenset[str]) -> None:
        key, ticket, seen = held
        host, path, query = key
        self.counter += 1
        body = f"{key}:{self.counter}:t".encode()
        with ticket:
            stored = self.cache.put(host, path, body, query=query, tags=sorted(tags),
                                    ticket=ticket)
        overtaken = any(
            kind == "flush" or (kind == "tag" and value in tags)
            or (kind == "path" and value == (host, path))
            for kind, value in self.model.purges[seen:]
        )
        assert stored is not overtaken
        model = self.model
        copies = model.pages.setdefault(key, {})
        if stored:
            copies[model.generation] = Entry(body, tags, model.now, model.generation)
            model.indexed.setdefault(key, set()).update(tags)
            return
        # Kept as the stale copy, purged now, unless a page not yet purged is there.
        held_copy = copies.get(model.generation)
        if held_copy is None or held_copy.purged is not None:
            copies[model.generation] = Entry(body, tags, model.now, model.generation,
                                             model.now)

    @rule(key=keys)
    def get(self, key: tuple[str, str, str]) -> None:
        host, path, query = key
        page = self.cache.get(host, path, query)
        expected = self.model.expect(key)
        got = None if page is None else (page.body, page.stale)
        assert got == expected

    @rule(tag=st.sampled_from(TAGS))
    def purge_tag(self, tag: str) -> None:
        self.cache.purge_tags([tag])
        self.model.purges.append(("tag", tag))
        for key, tags in self.model.indexed.items():
            if tag in tags:
                self.model.purge(key)

    @rule(host=st.sampled_from(HOSTS), path=st.sampled_from(PATHS))
    def purge_path(self, host: str, path: str) -> None:
        self.cache.purge_paths(host, [path])
        self.model.purges.append(("path", (host, path)))
        for key in list(self.model.pages):
            if key[0] == host and key[1] == path:
                self.model.purge(key)

    @rule()
    def flush(self) -> None:
        self.cache.flush()
        self.model.purges.append(("flush", None))
        model = self.model
        model.flushed[model.generation] = model.now
        model.generation += 1
        model.indexed.clear()

    @rule(seconds=st.sampled_from([1, 5, 9, 10, 30, 49, 50, 61]))
    def tick(self, seconds: int) -> None:
        self.model.now += seconds

    @invariant()
    def generation_matches(self) -> None:
        assert self.cache.generation() == f"g{self.model.generation}"


PageCacheMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30,
                                              deadline=None)
TestPageCacheModel = PageCacheMachine.TestCase
