"""``php -S`` as the page cache's upstream: framed responses, as production PHP sends them.

PHP's built-in server answers a script with neither ``Content-Length`` nor chunked framing:
the body ends at the close, which the shim can never tell from a cut, so it never stores
such a page (:mod:`tenantkit.web.backends`). php-fpm behind nginx or Apache frames every
response; :func:`framed` makes ``php -S`` do the same, with an output handler that buffers
the page and sends its ``Content-Length``::

    subprocess.Popen([php, *framed(tmp_path), "-S", "127.0.0.1:8080", "-t", docroot])

A script that flushes its output early still goes out unframed (and is not stored). A
router script (``php -S host:port router.php``) gets no ``auto_prepend_file``: serve the
directory (``-t``), whose ``index.php`` answers every path that is not a file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FRAMING_PHP", "framed"]

#: Prepended to every script: buffers the whole page, then says how long it is (not when
#: the script throws the buffer away, ``ob_end_clean()``: what it prints next is unframed).
FRAMING_PHP = """<?php
ob_start(function (string $buffer, int $phase): string {
    if (($phase & PHP_OUTPUT_HANDLER_FINAL) && !($phase & PHP_OUTPUT_HANDLER_CLEAN)
            && !headers_sent()) {
        header('Content-Length: ' . strlen($buffer));
    }
    return $buffer;
});
"""


def framed(directory: Path) -> list[str]:
    """``php`` options that frame every response (the prepend file is written into
    *directory*)."""
    prepend = Path(directory) / "tenantkit-framing.php"
    prepend.write_text(FRAMING_PHP)
    return ["-d", f"auto_prepend_file={prepend}"]
