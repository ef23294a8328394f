"""The WordPress drop-in's read-your-writes cookie makes the page cache step aside."""

from __future__ import annotations

import re
from pathlib import Path

from tenantkit.config import DEFAULT_BYPASS_COOKIES

DROP_IN = Path(__file__).parents[2] / "contrib" / "wp-db-router.php"


def test_drop_in_cookie_is_a_default_bypass_cookie() -> None:
    match = re.search(r"public const COOKIE = '([^']+)';", DROP_IN.read_text())
    assert match is not None
    cookie = match.group(1)
    assert any(cookie.startswith(prefix) for prefix in DEFAULT_BYPASS_COOKIES)
    # The shim's own signed cookie has another name, so neither side misreads the other's.
    assert cookie != "tenantkit_rw"
