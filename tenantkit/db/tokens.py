"""Read-your-writes tokens: what a reader must see, and the tokens of one unit of work.

::

    token = ConsistencyToken("0-1-42", time.time())   # a commit's GTID and wall-clock time
    cookie = token.dumps()                             # "1.18c2e5f3a10.0-1-42", cookie-safe
    ConsistencyToken.loads(cookie)                     # back; InvalidToken if forged
    scope = TokenScope(given=token)                    # a unit of work (one request)
    scope.produced = newer_token                       # set by the Router after a commit
    scope.effective                                    # the newer of the two: what reads honour

The :class:`~tenantkit.db.router.Router` keeps one :class:`TokenScope` per context (thread or
asyncio task) and makes a token after each commit that wrote; see its module docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tenantkit.errors import InvalidToken

__all__ = ["ConsistencyToken", "TokenScope"]

_GTID_MARIADB = r"\d{1,10}-\d{1,10}-\d{1,20}(?:,\d{1,10}-\d{1,10}-\d{1,20})*"
_GTID_MYSQL = (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
               r"(?::\d{1,20}(?:-\d{1,20})?)+")
_GTID = re.compile(rf"(?:{_GTID_MARIADB}|{_GTID_MYSQL}(?:,{_GTID_MYSQL})*)")
_TOKEN = re.compile(r"1\.([0-9a-f]{1,13})\.([0-9A-Za-z:_-]{0,2000})")
_NUMBER = re.compile(r"\d+")
# What the servers parse: MariaDB's domain and server ids are 32-bit, its sequence numbers
# 64-bit (unsigned); MySQL's transaction numbers are positive 63-bit.
_MAX_32 = 2**32 - 1
_MAX_64 = 2**64 - 1
_MAX_MYSQL_GNO = 2**63 - 1


def _out_of_range(gtid: str) -> str | None:
    """The first number of *gtid* (already in the right form) the server cannot parse."""
    for part in gtid.split(","):
        if ":" in part:  # MySQL uuid:1-5:7
            for number in _NUMBER.findall(part.split(":", 1)[1]):
                if not 0 < int(number) <= _MAX_MYSQL_GNO:
                    return f"transaction number {number} is not between 1 and 2^63-1"
            continue
        domain, server, seq = part.split("-")
        if int(domain) > _MAX_32 or int(server) > _MAX_32:
            return f"{part}: domain and server id must be at most 2^32-1"
        if int(seq) > _MAX_64:
            return f"{part}: sequence number must be at most 2^64-1"
    return None


@dataclass(frozen=True)
class ConsistencyToken:
    """What a reader must see: a commit's GTID (``None`` on servers without GTIDs) and its
    wall-clock time (``time.time()``, for pinning).

    ``dumps()`` gives a short cookie-safe string (``1.18c2e5f3a10.0-1-42``); ``loads()``
    reads it back and raises :class:`~tenantkit.errors.InvalidToken` for anything else.
    """

    gtid: str | None
    time: float

    def dumps(self) -> str:
        gtid = (self.gtid or "").replace(",", "_")
        return f"1.{max(0, int(self.time * 1000)):x}.{gtid}"

    @classmethod
    def loads(cls, text: str | bytes) -> ConsistencyToken:
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken(
                    "consistency token: not ASCII (expected what ConsistencyToken.dumps() "
                    "wrote, like 1.18c2e5f3a10.0-1-42; drop the cookie)"
                ) from None
        if not isinstance(text, str):
            raise InvalidToken(f"consistency token: expected a string, got {type(text).__name__}")
        match = _TOKEN.fullmatch(text.strip())
        if match is None:
            shown = text[:40] + ("..." if len(text) > 40 else "")
            raise InvalidToken(
                f"consistency token {shown!r}: not in the form 1.<hex milliseconds>.<gtid> "
                "that ConsistencyToken.dumps() writes (a truncated or forged cookie: drop it)"
            )
        gtid = match.group(2).replace("_", ",") or None
        if gtid is not None and not _GTID.fullmatch(gtid):
            raise InvalidToken(
                f"consistency token: {gtid[:60]!r} is not a MariaDB (0-1-42) or MySQL "
                "(uuid:1-5) GTID (drop the cookie)"
            )
        problem = _out_of_range(gtid) if gtid is not None else None
        if problem is not None:
            raise InvalidToken(
                f"consistency token: {problem}: no server has such a GTID (a forged cookie: "
                "drop the cookie)"
            )
        return cls(gtid, int(match.group(1), 16) / 1000)


class TokenScope:
    """The tokens of one unit of work: ``given`` (honoured by its reads, e.g. from a cookie)
    and ``produced`` (the newest token of its own commits)."""

    __slots__ = ("given", "produced")

    def __init__(self, given: ConsistencyToken | None = None) -> None:
        self.given = given
        self.produced: ConsistencyToken | None = None

    @property
    def effective(self) -> ConsistencyToken | None:
        """The token reads must honour: the newer of ``produced`` and ``given``."""
        if self.produced is None:
            return self.given
        if self.given is None or self.produced.time >= self.given.time:
            return self.produced
        return self.given
