"""One source for the classifier's word lists: sql_keywords.json, and the PHP block made from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tenantkit.db import classify
from tenantkit.db.keywords import KEYWORDS, load_keywords
from tenantkit.db.phpkeywords import main, php_block, sync_php

DROP_IN = Path(__file__).resolve().parents[2] / "contrib" / "wp-db-router.php"


def test_the_committed_php_block_is_what_the_json_generates() -> None:
    assert sync_php(DROP_IN, check=True), (
        "contrib/wp-db-router.php's keyword constants differ from tenantkit/db/sql_keywords.json:"
        " run python -m tenantkit.db.phpkeywords contrib/wp-db-router.php"
    )


def test_check_fails_on_a_hand_edited_block_and_a_rewrite_fixes_it(tmp_path: Path) -> None:
    copy = tmp_path / "db.php"
    shutil.copy(DROP_IN, copy)
    copy.write_text(copy.read_text().replace("'SLEEP', ", "", 1))
    assert main(["--check", str(copy)]) == 1
    assert "'SLEEP'" not in copy.read_text().split("// END generated")[0].split("BEGIN")[1]
    assert main([str(copy)]) == 0
    assert main(["--check", str(copy)]) == 0
    assert copy.read_text() == DROP_IN.read_text()


def test_a_file_without_markers_is_an_error(tmp_path: Path) -> None:
    php = tmp_path / "x.php"
    php.write_text("<?php\nfinal class X {}\n")
    with pytest.raises(ValueError, match="no generated block"):
        sync_php(php)
    assert main([str(php)]) == 2


@pytest.mark.parametrize("word, php", [
    pytest.param("SELECT", "'SELECT'", id="plain"),
    pytest.param("'", "'\\''", id="quote"),
    pytest.param("\\", "'\\\\'", id="backslash"),
])
def test_php_strings_are_quoted(word: str, php: str) -> None:
    assert f"private const X = [{php}];" in php_block(keywords={"x": [word]})


def test_classify_uses_the_shared_lists() -> None:
    assert load_keywords() == dict(KEYWORDS)
    assert set(KEYWORDS["unsafe_functions"]) <= classify._TRAP_HINTS
    assert set(KEYWORDS["trap_words"]) <= classify._TRAP_HINTS
    assert set(KEYWORDS["oracle_sequence_words"]) <= classify._TRAP_HINTS
    assert frozenset(KEYWORDS["unsafe_sysvars"]) == classify._UNSAFE_SYSVARS
    assert frozenset(KEYWORDS["read_starters"]) == classify._READ_STARTERS
    assert all(word == word.upper() for words in KEYWORDS.values() for word in words)


def test_the_drop_in_carries_the_connection_lost_codes_and_check_catches_a_drift(
        tmp_path: Path) -> None:
    from tenantkit.db.failures import CONNECTION_LOST

    line = next(x for x in DROP_IN.read_text().splitlines() if "const CONNECTION_LOST" in x)
    assert line.strip() == ("private const CONNECTION_LOST = ["
                            + ", ".join(map(str, sorted(CONNECTION_LOST))) + "];")
    copy = tmp_path / "db.php"
    shutil.copy(DROP_IN, copy)
    copy.write_text(copy.read_text().replace("2013, ", "", 1))
    assert main(["--check", str(copy)]) == 1
    assert main([str(copy)]) == 0
    assert copy.read_text() == DROP_IN.read_text()
