"""The tag vocabulary: the one list of what a cached page may be tagged with.

What tags a page (the WordPress mu-plugin ``contrib/tenantkit-tags.php``, the PunBB patch,
the WSGI apps) and what purges it (:mod:`tenantkit.cache.events`, through the drop-in's and
the patch's events) speak this vocabulary; the PHP side gets it as constants generated into a
marked block of ``contrib/tenantkit-events.php``, which both PHP integrations load
(:mod:`tenantkit.export.tags`)::

    tags.tag("post", 42)         # "post:42"
    tags.HOME                    # "home"

``SITE`` is the site-wide tag: a page stored without any tag is stored under it
(:func:`tenantkit.cache.caches.site_page_cache`), and every
purge of the site (by tag or by path, see :mod:`tenantkit.cache.purge`) purges it too, so a
page nobody tagged is refreshed by any change instead of living until its TTL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "FEED", "HOME", "INDEX", "KINDS", "SITE", "WORDS", "TagKind", "is_untagged", "tag",
]


class TagKind(NamedTuple):
    """One kind of tag: its name (``post``, or ``home`` for a plain word), whether it takes a
    number (``post:42``), what it means, and who emits it."""

    name: str
    numbered: bool
    meaning: str
    app: str


#: The vocabulary. A numbered kind is written ``<name>:<N>``; a plain one is the word itself.
KINDS: tuple[TagKind, ...] = (
    TagKind("post", True, "a post or page N: its own page, and every page listing it",
            "WordPress, WSGI apps"),
    TagKind("term", True, "a term's archive (category, tag, taxonomy term N); a single post "
            "carries its terms", "WordPress"),
    TagKind("author", True, "an author's archive (user N); a single post carries its author",
            "WordPress"),
    TagKind("home", False, "the front page, date archives, search, 404, the sitemap: pages "
            "any new or edited post may change", "WordPress, WSGI apps"),
    TagKind("feed", False, "every feed", "WordPress"),
    TagKind("topic", True, "a PunBB topic N (every page of it)", "PunBB"),
    TagKind("forum", True, "a PunBB forum N's topic listing (every page of it)", "PunBB"),
    TagKind("index", False, "the PunBB forum index, and the pages that list across forums "
            "(search, user list, profiles, rules)", "PunBB"),
    TagKind("site", False, "site-wide: a page stored without tags; every purge of the site "
            "purges it", "tenantkit (never sent by an app)"),
)

HOME = "home"
FEED = "feed"
INDEX = "index"
SITE = "site"
_NUMBERED = frozenset(k.name for k in KINDS if k.numbered)
#: The plain words of the vocabulary.
WORDS = frozenset(k.name for k in KINDS if not k.numbered)


def tag(kind: str, number: int) -> str:
    """``tag("post", 42)`` -> ``"post:42"``; a kind outside the vocabulary is a bug."""
    if kind not in _NUMBERED:
        raise ValueError(f"tag kind {kind!r}: expected one of {', '.join(sorted(_NUMBERED))}")
    return f"{kind}:{int(number)}"


def is_untagged(tags: Iterable[str]) -> bool:
    """True for a page's stored tags that say nothing about it (none, or only :data:`SITE`)."""
    return all(t == SITE for t in tags)
