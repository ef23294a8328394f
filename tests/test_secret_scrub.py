"""secret.scrub: driver errors that quote pieces of a password (issue 16, section 3)."""

from __future__ import annotations

import pytest

from tenantkit.secret import scrub

URL = "mysql+tenantkit://app:p@ss%20w@rd@db.internal:3306/blog"


@pytest.mark.parametrize("message", [
    pytest.param("Can't connect to MySQL server on 'ss%20w@rd@db.internal'", id="host split"),
    pytest.param("Can't connect to MySQL server on 'rd@db.internal'", id="last piece"),
    pytest.param("Access denied (using password: p@ss w@rd)", id="decoded"),
    pytest.param(f"engine {URL} failed", id="whole url"),
])
def test_no_piece_of_the_password_is_left(message: str) -> None:
    out = scrub(message, [URL])
    for piece in ("p@ss", "w@rd", "ss%20w", "ss w", "rd@db"):
        assert piece not in out, out


def test_text_without_secrets_is_left_alone() -> None:
    message = "Access denied for user 'app'@'10.0.0.1'"
    assert scrub(message, [URL, "redis://127.0.0.1:6379/0"]) == message
