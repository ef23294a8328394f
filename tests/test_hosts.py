from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantkit.errors import InvalidHost
from tenantkit.hosts import (
    HostIndex,
    normalize_host,
    normalize_pattern,
    pattern_key,
    request_host,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("example.org", "example.org", id="already normal"),
        pytest.param("Example.ORG", "example.org", id="lowercased"),
        pytest.param("example.org.", "example.org", id="one trailing dot dropped"),
        pytest.param("example.org:8080", "example.org", id="port stripped"),
        pytest.param("example.org.:443", "example.org", id="trailing dot and port"),
        pytest.param("[::1]:8080", "[::1]", id="ipv6 with port"),
        pytest.param("[::1]", "[::1]", id="ipv6 without port"),
        pytest.param("[2001:DB8:0:0::1]", "[2001:db8::1]", id="ipv6 compressed and lowercased"),
        pytest.param("127.0.0.1:80", "127.0.0.1", id="ipv4 with port"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="unicode to a-label"),
        pytest.param("BÜCHER.example", "xn--bcher-kva.example", id="unicode uppercase"),
        pytest.param("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\uff0e\uff4f\uff52\uff47",
                     "example.org", id="full-width mapped by uts46"),
        pytest.param("bücher.de。", "xn--bcher-kva.de", id="ideographic trailing dot"),
        pytest.param("ß.de", "xn--zca.de", id="sharp s kept (non-transitional)"),
        pytest.param("my_host.bücher.de", "my_host.xn--bcher-kva.de", id="underscore label"),
        pytest.param("xn--bcher-kva.de", "xn--bcher-kva.de", id="a-label kept"),
        pytest.param("a" * 63 + ".org", "a" * 63 + ".org", id="63-character label"),
        pytest.param(".".join(["a" * 49] * 5) + ".org", ".".join(["a" * 49] * 5) + ".org",
                     id="253-character name"),
        pytest.param("localhost:0", "localhost", id="port zero"),
        pytest.param("localhost:65535", "localhost", id="highest port"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected
    assert normalize_host(expected) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param("", "empty host", id="empty"),
        pytest.param(".", "empty host", id="only a dot"),
        pytest.param("a..b", "empty label", id="double dot"),
        pytest.param(".example.org", "empty label", id="leading dot"),
        pytest.param("example.org..", "empty label", id="two trailing dots"),
        pytest.param("a/b.org", "'/'", id="slash"),
        pytest.param("..\\x", "'\\\\'", id="backslash"),
        pytest.param("exa\x00mple.org", "control character", id="nul"),
        pytest.param("exa\x1bmple.org", "control character", id="escape"),
        pytest.param("exa mple.org", "whitespace", id="space"),
        pytest.param("example.org\r\nX-Evil: 1", "whitespace", id="header injection"),
        pytest.param("exa\u200bmple.org", "control character", id="zero width space"),
        pytest.param("a" * 64 + ".org", "longer than 63", id="64-character label"),
        pytest.param(".".join(["a" * 50] * 5) + ".org", "longer than 253", id="long name"),
        pytest.param("x" * 5000, "longer than 253", id="huge"),
        pytest.param("example.org:", "bad port", id="empty port"),
        pytest.param("example.org:http", "bad port", id="named port"),
        pytest.param("example.org:65536", "bad port", id="port too high"),
        pytest.param("example.org:-1", "bad port", id="negative port"),
        pytest.param("example.org:\uff18\uff10", "bad port", id="full-width digits port"),
        pytest.param("[::1", "closing", id="unclosed ipv6"),
        pytest.param("[::1]x", "after the IPv6", id="junk after ipv6"),
        pytest.param("[::1]:x", "bad port", id="ipv6 bad port"),
        pytest.param("[not:an:ip]", "IPv6", id="bad ipv6"),
        pytest.param("[fe80::1%eth0]", "zone", id="ipv6 zone"),
        pytest.param("::1", "brackets", id="bare ipv6"),
        pytest.param("exa*mple.org", "not allowed", id="star"),
        pytest.param("user@example.org", "not allowed", id="userinfo"),
        pytest.param("example.org?x", "not allowed", id="query"),
        pytest.param("-ü.de", "internationalised", id="bad idna hyphen"),
        pytest.param("ü" * 70 + ".de", "internationalised", id="idna label too long"),
    ],
)
def test_normalize_host_rejects(raw: str, why: str) -> None:
    with pytest.raises(InvalidHost, match=re.escape(why)) as info:
        normalize_host(raw)
    assert "invalid host" in str(info.value)
    assert len(str(info.value)) < 400  # a huge input is not echoed back whole


def test_normalize_host_rejects_non_strings() -> None:
    with pytest.raises(InvalidHost, match="expected a string"):
        normalize_host(b"example.org")  # type: ignore[arg-type]


def test_invalid_host_is_raised_fresh_each_time() -> None:
    # Invalid results are cached; each call must still raise its own exception object.
    with pytest.raises(InvalidHost) as first:
        normalize_host("a..b")
    with pytest.raises(InvalidHost) as second:
        normalize_host("a..b")
    assert first.value is not second.value
    assert str(first.value) == str(second.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("Example.org", "example.org", id="exact"),
        pytest.param("*.Example.org", "*.example.org", id="leading star"),
        pytest.param(".example.org", ".example.org", id="leading dot"),
        pytest.param("www.example.*", "www.example.*", id="trailing star"),
        pytest.param("*.bücher.de", "*.xn--bcher-kva.de", id="leading star unicode"),
        pytest.param("~^(www\\.)?Example\\.org$", "~^(www\\.)?Example\\.org$", id="regex kept"),
        pytest.param("[::1]", "[::1]", id="ipv6"),
    ],
)
def test_normalize_pattern(raw: str, expected: str) -> None:
    assert normalize_pattern(raw) == expected
    assert normalize_pattern(expected) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param("*", "whole label", id="lone star"),
        pytest.param("*example.org", "whole label", id="star inside first label"),
        pytest.param("www.*.org", "whole label", id="star in the middle"),
        pytest.param("www.example*", "whole label", id="star inside last label"),
        pytest.param("*.example.*", "whole label", id="both ends"),
        pytest.param("**.example.org", "whole label", id="double star"),
        pytest.param("*.", "empty", id="star dot"),
        pytest.param("..example.org", "empty label", id="double leading dot"),
        pytest.param("example.org:80", "no port", id="port"),
        pytest.param("[::1]:80", "no port", id="ipv6 port"),
        pytest.param("*.[::1]", "IPv6", id="ipv6 wildcard"),
        pytest.param("~", "empty regex", id="empty regex"),
        pytest.param("~(unclosed", "does not compile", id="bad regex"),
        pytest.param("a b.org", "whitespace", id="space"),
    ],
)
def test_normalize_pattern_rejects(raw: str, why: str) -> None:
    with pytest.raises(InvalidHost, match=re.escape(why)):
        normalize_pattern(raw)


SITES: dict[str, list[str]] = {
    "a-exact": ["www.example.org", "example.org"],
    "b-lead-star": ["*.example.org"],
    "c-lead-dot": [".shop.example.org"],
    "d-deeper": ["*.eu.shop.example.org"],
    "e-tail": ["www.example.*", "mail.*"],
    "f-tail-longer": ["www.example.co.*"],
    "g-regex": ["~^api-[0-9]+\\.example\\.net$", "~^(.+)\\.dev$"],
    "h-regex": ["~^api-1\\.example\\.net$", "~\\.test$"],
    "i-ipv6": ["[::1]"],
}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("www.example.org", "a-exact", id="exact beats leading and trailing"),
        pytest.param("WWW.EXAMPLE.ORG:8080", "a-exact", id="exact after normalisation"),
        pytest.param("example.org", "a-exact", id="exact apex"),
        pytest.param("blog.example.org", "b-lead-star", id="leading star"),
        pytest.param("a.b.c.example.org", "b-lead-star", id="leading star any depth"),
        pytest.param("shop.example.org", "c-lead-dot", id="dot matches the name itself"),
        pytest.param("x.shop.example.org", "c-lead-dot", id="longer leading wins"),
        pytest.param("eu.shop.example.org", "c-lead-dot", id="star needs a label below"),
        pytest.param("x.eu.shop.example.org", "d-deeper", id="longest leading wins"),
        pytest.param("www.example.com", "e-tail", id="trailing star"),
        pytest.param("www.example.co.uk", "f-tail-longer", id="longest trailing wins"),
        pytest.param("www.example.co", "e-tail", id="trailing needs a label after"),
        pytest.param("mail.anything.at.all", "e-tail", id="trailing any depth"),
        pytest.param("mail", None, id="trailing not the bare prefix"),
        pytest.param("api-1.example.net", "g-regex", id="first regex by site order"),
        pytest.param("foo.dev", "g-regex", id="second regex of a site"),
        pytest.param("foo.test", "h-regex", id="regex of a later site"),
        pytest.param("API-7.Example.NET", "g-regex", id="regex on normalised host"),
        pytest.param("[::1]:8080", "i-ipv6", id="ipv6 literal"),
        pytest.param("nothing.invalid", None, id="miss"),
        pytest.param("a..b", None, id="invalid host is a miss"),
        pytest.param("", None, id="empty host is a miss"),
        pytest.param("x" * 100000, None, id="huge host is a miss"),
    ],
)
def test_precedence(host: str, expected: str | None) -> None:
    index = HostIndex(SITES)
    assert index.lookup(host) == expected
    assert HostIndex(SITES, default="zz").lookup(host) == (expected or "zz")


def test_lookup_never_raises_on_non_strings() -> None:
    index = HostIndex(SITES, default="d")
    assert index.lookup(None) == "d"  # type: ignore[arg-type]
    assert index.lookup(["x"]) == "d"  # type: ignore[arg-type]
    assert index.lookup(b"www.example.org") == "d"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mapping", "host", "expected", "conflicts"),
    [
        pytest.param({"b": ["x.org"], "a": ["x.org"]}, "x.org", "a", 1, id="exact: first name"),
        pytest.param({"b": ["*.x.org"], "a": [".x.org"]}, "x.org", "a", 1,
                     id="star and dot are one claim: dot owner"),
        pytest.param({"a": ["*.x.org"], "b": [".x.org"]}, "x.org", None, 1,
                     id="star and dot are one claim: star owner"),
        pytest.param({"a": ["*.x.org", ".x.org"]}, "x.org", "a", 0,
                     id="same site star and dot"),
        pytest.param({"b": ["w.*"], "a": ["w.*"]}, "w.org", "a", 1, id="trailing"),
        pytest.param({"b": ["~x"], "a": ["~x"]}, "x.org", "a", 1, id="regex"),
        pytest.param({"a": ["x.org", "X.ORG."]}, "x.org", "a", 0, id="same site twice"),
    ],
)
def test_conflicts_are_deterministic(
    mapping: dict[str, list[str]], host: str, expected: str | None, conflicts: int
) -> None:
    index = HostIndex(mapping)
    assert index.lookup(host) == expected
    assert len(index.conflicts) == conflicts
    for conflict in index.conflicts:
        assert conflict.kept == "a"
        assert conflict.dropped == ("b",)
        assert "a keeps it" in str(conflict)


def test_bad_pattern_raises_at_build() -> None:
    with pytest.raises(InvalidHost, match="whole label"):
        HostIndex({"a": ["www.*.org"]})


@pytest.mark.parametrize(
    ("environ", "trusted", "expected"),
    [
        pytest.param({"HTTP_HOST": "a.org"}, 0, "a.org", id="host header"),
        pytest.param({"HTTP_HOST": "a.org", "HTTP_X_FORWARDED_HOST": "evil.org"}, 0, "a.org",
                     id="forwarded ignored when untrusted"),
        pytest.param({"HTTP_HOST": "proxy", "HTTP_X_FORWARDED_HOST": "b.org"}, 1, "b.org",
                     id="one trusted proxy"),
        pytest.param({"HTTP_HOST": "p", "HTTP_X_FORWARDED_HOST": "evil, b.org, c.org"}, 2,
                     "b.org", id="two hops from the right"),
        pytest.param({"HTTP_HOST": "p", "HTTP_X_FORWARDED_HOST": "b.org"}, 2, "p",
                     id="too few values falls back"),
        pytest.param({"SERVER_NAME": "s.org", "SERVER_PORT": "8080"}, 0, "s.org:8080",
                     id="server name"),
        pytest.param({}, 0, "", id="nothing"),
    ],
)
def test_request_host(environ: dict[str, str], trusted: int, expected: str) -> None:
    assert request_host(environ, trusted) == expected


# --- properties ----------------------------------------------------------------------------

LABELS = ["a", "b", "c", "ex", "xn--bcher-kva", "ü", "B", "w_w"]


@st.composite
def hosts(draw: st.DrawFn) -> str:
    labels = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=5))
    host = ".".join(labels)
    if draw(st.booleans()):
        host += "."
    if draw(st.booleans()):
        host += f":{draw(st.integers(0, 65535))}"
    return host


@st.composite
def patterns(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["exact", "star", "dot", "tail", "regex"]))
    if kind == "regex":
        return draw(st.sampled_from(["~^a\\.", "~b$", "~^(a|c)\\.ex$", "~xn--", "~^w_w"]))
    name = ".".join(draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=3)))
    return {"exact": name, "star": f"*.{name}", "dot": f".{name}", "tail": f"{name}.*"}[kind]


def _matches(pattern: str, host: str) -> bool:
    if pattern.startswith("~"):
        return re.search(pattern[1:], host, re.IGNORECASE) is not None
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    if pattern.startswith("."):
        return host == pattern[1:] or host.endswith(pattern)
    if pattern.endswith(".*"):
        return host.startswith(pattern[:-1]) and len(host) > len(pattern) - 1
    return host == pattern


def reference_lookup(mapping: Mapping[str, Sequence[str]], raw: str, default: str | None
                     ) -> str | None:
    """The precedence rules, spelled out by brute force over every pattern."""
    try:
        host = normalize_host(raw)
    except InvalidHost:
        return default
    owners: dict[tuple[str, str], str] = {}
    for site in sorted(mapping):
        for p in mapping[site]:
            owners.setdefault(pattern_key(normalize_pattern(p)), site)
    active = [
        (site, normalize_pattern(p))
        for site in sorted(mapping)
        for p in mapping[site]
        if owners[pattern_key(normalize_pattern(p))] == site
    ]
    for kind in ("exact", "leading", "trailing"):
        found = [
            (len(pattern_key(p)[1]), site)
            for site, p in active
            if pattern_key(p)[0] == kind and _matches(p, host)
        ]
        if found:
            return max(found, key=lambda f: f[0])[1]
    for site in sorted(mapping):
        for p in mapping[site]:
            if p.startswith("~") and _matches(p, host):
                return site
    return default


@settings(max_examples=300, deadline=None)
@given(
    mapping=st.dictionaries(st.sampled_from(["s1", "s2", "s3", "s4"]),
                            st.lists(patterns(), min_size=1, max_size=4), max_size=4),
    probes=st.lists(hosts(), min_size=1, max_size=10),
    default=st.sampled_from([None, "dflt"]),
)
def test_lookup_equals_reference(mapping: dict[str, list[str]], probes: list[str],
                                 default: str | None) -> None:
    index = HostIndex(mapping, default=default)
    normal = {site: [normalize_pattern(p) for p in ps] for site, ps in mapping.items()}
    trusted = HostIndex(normal, default=default, normalized=True)
    for probe in probes:
        expected = reference_lookup(mapping, probe, default)
        assert index.lookup(probe) == expected, probe
        assert trusted.lookup(probe) == expected, probe


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), hosts()))
def test_normalize_host_is_idempotent(raw: str) -> None:
    try:
        once = normalize_host(raw)
    except InvalidHost:
        return
    assert normalize_host(once) == once
    assert HostIndex({"s": [once]}).lookup(raw) == "s"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_lookup_never_raises(raw: str) -> None:
    index = HostIndex(SITES, default="d")
    assert index.lookup(raw) is not None
