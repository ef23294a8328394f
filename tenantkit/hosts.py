"""Host names: normalisation, nginx ``server_name`` matching, forwarded-host handling.

One function normalises both the patterns in site files and the Host headers of requests::

    >>> normalize_host("WWW.Example.ORG.:8080")
    'www.example.org'
    >>> normalize_host("[::1]:8080")
    '[::1]'
    >>> normalize_host("bücher.example")
    'xn--bcher-kva.example'

:class:`HostIndex` maps a host to a site with exactly nginx's ``server_name`` precedence::

    >>> index = HostIndex({"blog": ["blog.example.org", "*.blog.example.org"],
    ...                    "shop": [".example.org"], "beta": ["beta.*"]})
    >>> index.lookup("x.blog.example.org"), index.lookup("example.org"), index.lookup("beta.io")
    ('blog', 'shop', 'beta')

1. the exact name;
2. the longest leading wildcard: ``*.example.org`` (any depth below, not ``example.org``
   itself) and ``.example.org`` (``example.org`` and anything below);
3. the longest trailing wildcard: ``www.example.*``;
4. regexes ``~^...$``, the first that matches, in site-name order then pattern order;
5. the default.

A lookup costs a few dictionary probes per label of the host, whatever the number of sites
(regexes aside). Two sites claiming the same pattern is a conflict: the site whose name sorts
first keeps it, and the conflict is listed in :attr:`HostIndex.conflicts`. As in nginx,
``*.example.org`` and ``.example.org`` are the same claim.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import idna

from tenantkit.errors import InvalidHost

__all__ = [
    "Conflict",
    "HostIndex",
    "PatternKind",
    "claim_owner",
    "host_claims",
    "normalize_host",
    "normalize_pattern",
    "normalize_patterns",
    "pattern_key",
    "request_host",
]

PatternKind = Literal["exact", "leading", "trailing", "regex"]

MAX_NAME = 253
MAX_LABEL = 63
# Longest raw input worth looking at: a 253-character name, brackets, a port, slack for
# Unicode that shrinks under UTS 46 mapping. Longer input is rejected before any work.
MAX_RAW = 1024

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# Already-normal hosts (lowercase ASCII labels, no port, no trailing dot) skip all work.
_NORMAL = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*").fullmatch
_PORT = re.compile(r"[0-9]{1,5}")


def _fail(raw: object, why: str) -> InvalidHost:
    shown = raw if not isinstance(raw, str) or len(raw) <= 80 else raw[:77] + "..."
    return InvalidHost(f"invalid host {shown!r}: {why}")


def _strip_port(raw: str) -> tuple[str, bool]:
    """Split off ``:port``; returns (host, is_ipv6_literal)."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise _fail(raw, "an IPv6 literal needs a closing ']' (write [::1] or [::1]:8080)")
        rest = raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _fail(raw, "unexpected text after the IPv6 literal")
        if rest:
            _check_port(raw, rest[1:])
        return raw[: end + 1], True
    head, sep, port = raw.rpartition(":")
    if not sep:
        return raw, False
    if ":" in head:
        raise _fail(raw, "an IPv6 address must be in brackets (write [2001:db8::1])")
    _check_port(raw, port)
    return head, False


def _check_port(raw: str, port: str) -> None:
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise _fail(raw, f"bad port {port!r} (a port is a number from 0 to 65535)")


def _ipv6(raw: str, literal: str) -> str:
    inner = literal[1:-1]
    if "%" in inner:
        raise _fail(raw, "IPv6 zone identifiers are not allowed in a host")
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        raise _fail(raw, "not a valid IPv6 address between the brackets") from None


def _check_chars(raw: str) -> None:
    for ch in raw:
        if ch in "/\\":
            raise _fail(raw, f"{ch!r} is not allowed in a host name")
        if ch.isspace():
            raise _fail(raw, "whitespace is not allowed in a host name")
        if unicodedata.category(ch)[0] == "C":
            raise _fail(raw, f"control character U+{ord(ch):04X} is not allowed in a host name")


def _to_alabels(raw: str, host: str) -> str:
    # UTS 46 mapping on the whole name (it folds case and full-width dots), then IDNA 2008
    # A-labels for the labels that are still Unicode; plain ASCII labels keep the looser
    # rules real Host headers need (underscores), checked below like any ASCII name.
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        return ".".join(
            label if label.isascii() else idna.alabel(label).decode("ascii")
            for label in mapped.split(".")
        )
    except (idna.IDNAError, UnicodeError, IndexError, ValueError) as exc:
        raise _fail(raw, f"not a valid internationalised name ({exc})") from None


def _normalize(raw: str) -> str:
    if not raw:
        raise _fail(raw, "empty host")
    if len(raw) > MAX_RAW:
        raise _fail(raw, f"longer than {MAX_NAME} characters")
    _check_chars(raw)
    host, literal = _strip_port(raw)
    if literal:
        return _ipv6(raw, host)
    if not host.isascii():
        host = _to_alabels(raw, host)
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise _fail(raw, "empty host name")
    host = host.lower()
    if len(host) > MAX_NAME:
        raise _fail(raw, f"longer than {MAX_NAME} characters")
    for label in host.split("."):
        if not label:
            raise _fail(raw, "empty label (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL:
            raise _fail(raw, f"label {label[:20]!r}... is longer than {MAX_LABEL} characters")
        if not _LABEL.fullmatch(label):
            bad = next(ch for ch in label if not _LABEL.fullmatch(ch))
            raise _fail(raw, f"character {bad!r} is not allowed in a host name")
    return host


@lru_cache(maxsize=16384)
def _cached(raw: str) -> str | InvalidHost:
    # Invalid hosts are cached too, as the exception to raise: a client repeating a bad
    # Host header costs one cache hit.
    if _NORMAL(raw) is not None and len(raw) <= MAX_NAME:
        return raw
    try:
        return _normalize(raw)
    except InvalidHost as exc:
        return exc.with_traceback(None)  # keep no frames alive in the cache


def normalize_host(raw: str) -> str:
    """Normalise a host name or Host header value; raise :class:`InvalidHost` if unusable.

    Strips a port (``[::1]:8080`` -> ``[::1]``), drops one trailing dot, lowercases and
    converts Unicode names to IDNA A-labels (UTS 46). Rejects empty input or labels, ``/``,
    ``\\``, control characters, whitespace, labels over 63 and names over 253 characters,
    and bad ports.
    """
    if type(raw) is str and _NORMAL(raw) is not None and len(raw) <= MAX_NAME:
        return raw
    if not isinstance(raw, str):
        raise _fail(raw, f"expected a string, got {type(raw).__name__}")
    if len(raw) > MAX_RAW:
        raise _fail(raw, f"longer than {MAX_NAME} characters")
    result = _cached(raw)
    if isinstance(result, InvalidHost):
        raise InvalidHost(*result.args)
    return result


def normalize_pattern(raw: str) -> str:
    """Normalise a ``server_name`` pattern: a name, ``*.name``, ``.name``, ``name.*`` or
    ``~regex``. Raises :class:`InvalidHost` for anything else (a ``*`` inside a label, a
    wildcard in the middle, a port, a regex that does not compile)."""
    if not isinstance(raw, str):
        raise _fail(raw, f"expected a string, got {type(raw).__name__}")
    if raw.startswith("~"):
        if len(raw) == 1:
            raise _fail(raw, "empty regex (write ~^(www\\.)?example\\.org$)")
        try:
            re.compile(raw[1:], re.IGNORECASE)
        except re.error as exc:
            raise _fail(raw, f"regex does not compile: {exc}") from None
        return raw
    body, prefix, suffix = raw, "", ""
    if raw.startswith("*."):
        body, prefix = raw[2:], "*."
    elif raw.startswith("."):
        body, prefix = raw[1:], "."
    elif raw.endswith(".*"):
        body, suffix = raw[:-2], ".*"
    if "*" in body:
        raise _fail(
            raw,
            "a wildcard is only allowed as a whole label at the start (*.example.org) or "
            "the end (www.example.*)",
        )
    if body.endswith(".") and (prefix or suffix):
        raise _fail(raw, "empty label")
    if ":" in body and not body.startswith("["):
        raise _fail(raw, "a host pattern takes no port (write the name alone)")
    if body.startswith("[") and (prefix or suffix):
        raise _fail(raw, "an IPv6 literal cannot take a wildcard")
    if body.startswith("[") and not body.endswith("]"):
        raise _fail(raw, "a host pattern takes no port (write the name alone)")
    return prefix + normalize_host(body) + suffix


def normalize_patterns(raws: Iterable[str]) -> tuple[str, ...]:
    """Normalise a site's host patterns (:func:`normalize_pattern`), dropping repeats and
    keeping the order. The :class:`InvalidHost` for a bad one carries its position in
    ``index``."""
    patterns: list[str] = []
    for i, raw in enumerate(raws):
        try:
            pattern = normalize_pattern(raw)
        except InvalidHost as exc:
            exc.index = i
            raise
        if pattern not in patterns:
            patterns.append(pattern)
    return tuple(patterns)


def pattern_key(pattern: str) -> tuple[PatternKind, str]:
    """What a normalised pattern claims: two sites with the same key conflict.

    ``*.example.org`` and ``.example.org`` both claim ``("leading", "example.org")``.
    """
    if pattern.startswith("~"):
        return "regex", pattern
    if pattern.startswith("*."):
        return "leading", pattern[2:]
    if pattern.startswith("."):
        return "leading", pattern[1:]
    if pattern.endswith(".*"):
        return "trailing", pattern[:-2]
    return "exact", pattern


@dataclass(frozen=True)
class Conflict:
    """Two or more sites claim the same pattern; ``kept`` keeps it, ``dropped`` lose it."""

    kind: PatternKind
    key: str
    kept: str
    dropped: tuple[str, ...]

    def __str__(self) -> str:
        shown = {"leading": f"*.{self.key} / .{self.key}", "trailing": f"{self.key}.*"}.get(
            self.kind, self.key
        )
        return (
            f"host pattern {shown} is claimed by sites {self.kept}, {', '.join(self.dropped)}: "
            f"{self.kept} keeps it (remove it from the other site files)"
        )


#: Who claims what: pattern key -> {site: bare}, where ``bare`` says that a leading claim
#: takes the name itself too (``.example.org``).
Claims = dict[tuple[PatternKind, str], dict[str, bool]]


def host_claims(mapping: Mapping[str, Iterable[str]], *, normalized: bool = True) -> Claims:
    """Which sites claim each pattern key (:func:`pattern_key`), sites in name order.

    The one rule for claiming a host: when several sites claim a key,
    :func:`claim_owner` keeps it. ``normalized=False`` normalises the patterns first.
    """
    claims: Claims = {}
    for site in sorted(mapping):
        for raw in mapping[site]:
            pattern = raw if normalized else normalize_pattern(raw)
            owners = claims.setdefault(pattern_key(pattern), {})
            owners[site] = owners.get(site, False) or pattern.startswith(".")
    return claims


def claim_owner(owners: Iterable[str]) -> str:
    """Of the sites claiming one pattern key, the one that keeps it: the first by name."""
    return min(owners)


class HostIndex:
    """Immutable host -> site-name index with nginx ``server_name`` precedence.

    ``HostIndex({"blog": ["blog.example.org", "*.example.org"]}, default="blog")``.
    Patterns are normalised here (:func:`normalize_pattern`); a bad one raises
    :class:`InvalidHost`. ``normalized=True`` skips that for patterns that already went
    through it (the registry's, from :func:`~tenantkit.sites.load_site`): half the build
    time. :meth:`lookup` never raises.
    """

    __slots__ = ("_exact", "_lead", "_lead_self", "_regex", "_tail", "conflicts", "default")

    def __init__(self, mapping: Mapping[str, Iterable[str]], default: str | None = None, *,
                 normalized: bool = False) -> None:
        claims = host_claims(mapping, normalized=normalized)
        # Regexes in site-name order, then pattern order (dicts keep insertion order).
        regexes = [(site, key) for (kind, key), owners in claims.items() if kind == "regex"
                   for site in owners]
        self._exact: dict[str, str] = {}
        # Leading wildcards by the name after "*." or "."; _lead_self holds the ".name" ones,
        # which match the bare name too. Plain strings as values: one memory access fewer.
        self._lead: dict[str, str] = {}
        self._lead_self: dict[str, str] = {}
        self._tail: dict[str, str] = {}
        conflicts: list[Conflict] = []
        for (kind, key), owners in claims.items():
            kept = claim_owner(owners)
            if len(owners) > 1:
                conflicts.append(Conflict(kind, key, kept, tuple(sorted(owners))[1:]))
            if kind == "exact":
                self._exact[key] = kept
            elif kind == "leading":
                self._lead[key] = kept
                if owners[kept]:
                    self._lead_self[key] = kept
            elif kind == "trailing":
                self._tail[key] = kept
        # Regexes: first match in site-name order, then pattern order; a regex claimed by
        # several sites is only ever reached for the first, so listing it once is exact.
        seen: set[str] = set()
        self._regex: tuple[tuple[re.Pattern[str], str], ...] = tuple(
            (re.compile(p[1:], re.IGNORECASE), site)
            for site, p in regexes
            if not (p in seen or seen.add(p))  # type: ignore[func-returns-value]
        )
        self.conflicts: tuple[Conflict, ...] = tuple(
            sorted(conflicts, key=lambda c: (c.kind, c.key))
        )
        self.default = default

    def __len__(self) -> int:
        return len(self._exact) + len(self._lead) + len(self._tail) + len(self._regex)

    def lookup(self, raw_host: str) -> str | None:
        """The site name for *raw_host* (a Host header value), else the default, else None.

        Never raises: an invalid host is a miss.
        """
        exact = self._exact
        # Exact keys are normal, and normalisation is idempotent: a raw value equal to a
        # key is that host, whatever else the index holds.
        try:
            site = exact.get(raw_host)
        except TypeError:  # unhashable
            return self.default
        if site is not None:
            return site
        if type(raw_host) is not str or len(raw_host) > MAX_RAW:
            return self.default
        if _NORMAL(raw_host) is not None and len(raw_host) <= MAX_NAME:
            # Already normal (the common case): no cache probe, and the exact miss stands.
            host = raw_host
        else:
            cached = _cached(raw_host)
            if type(cached) is not str:
                return self.default
            host = cached
            site = exact.get(host)
            if site is not None:
                return site
        site = self._wildcards(host)
        return self.default if site is None else site

    def match(self, host: str) -> str | None:
        """Like :meth:`lookup` for an already normalised *host*, without the default."""
        site = self._exact.get(host)
        return site if site is not None else self._wildcards(host)

    def _wildcards(self, host: str) -> str | None:
        lead = self._lead
        if lead:
            lead_self = self._lead_self
            if lead_self:
                site = lead_self.get(host)
                if site is not None:
                    return site
            dot = host.find(".")
            while dot >= 0:
                site = lead.get(host[dot + 1 :])
                if site is not None:
                    return site
                dot = host.find(".", dot + 1)
        tail = self._tail
        if tail:
            dot = host.rfind(".")
            while dot > 0:
                site = tail.get(host[:dot])
                if site is not None:
                    return site
                dot = host.rfind(".", 0, dot)
        for regex, site in self._regex:
            if regex.search(host):
                return site
        return None


def request_host(environ: Mapping[str, object], trusted_proxies: int = 0) -> str:
    """The raw host a WSGI request asked for (not yet normalised).

    ``X-Forwarded-Host`` counts only when ``trusted_proxies > 0``: the value that many hops
    from the right (each trusted proxy appends one). Otherwise, or when the header has fewer
    values than that, ``Host``, then ``SERVER_NAME[:SERVER_PORT]``.
    """
    if trusted_proxies > 0:
        forwarded = environ.get("HTTP_X_FORWARDED_HOST")
        if isinstance(forwarded, str) and forwarded:
            values = [v.strip() for v in forwarded.split(",")]
            if len(values) >= trusted_proxies:
                return values[-trusted_proxies]
    host = environ.get("HTTP_HOST")
    if isinstance(host, str) and host:
        return host
    name = environ.get("SERVER_NAME")
    port = environ.get("SERVER_PORT")
    if isinstance(name, str) and name:
        return f"{name}:{port}" if isinstance(port, str) and port else name
    return ""
