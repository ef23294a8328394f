"""Issue 17 section 2: what a store costs the file system, counted with strace.

On this kind of machine a new inode (a directory, a file) costs far more than anything else
a store does; the rest must stay few. The counts are exact: a change that adds a system call
to every store shows here.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PUTS = 20
SCRIPT = """
import os, sys
from tenantkit.cache.pagecache import PageCache
cache = PageCache(sys.argv[1], ttl=60)
headers = [("Content-Type", "text/html; charset=utf-8")]
for i in range({puts}):  # the directories of the re-stored pages exist
    cache.put("a.test", f"/old/{{i}}/", b"x" * 10000, headers=headers)
os.path.exists("/tk-strace-mark-new")
for i in range({puts}):
    cache.put("a.test", f"/new/{{i}}/", b"x" * 10000, headers=headers)
os.path.exists("/tk-strace-mark-again")
for i in range({puts}):
    cache.put("a.test", f"/old/{{i}}/", b"y" * 10000, headers=headers)
os.path.exists("/tk-strace-mark-end")
"""


def _calls(tmp_path: Path) -> dict[str, collections.Counter[str]]:
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail("strace is not installed (apt-get install strace)")
        pytest.skip("strace is not installed (apt-get install strace)")
    out = tmp_path / "trace"
    subprocess.run([strace, "-o", str(out), sys.executable, "-c", SCRIPT.format(puts=PUTS),
                    str(tmp_path / "pages")], check=True, timeout=60)
    counts: dict[str, collections.Counter[str]] = {}
    section = None
    for line in out.read_text().splitlines():
        mark = re.search(r'"/tk-strace-mark-(\w+)"', line)
        if mark:
            section = mark.group(1)
            counts[section] = collections.Counter()
            continue
        call = re.match(r"(\w+)\(", line)
        if section is not None and call:
            counts[section][call.group(1)] += 1
    return counts


def test_a_put_makes_few_system_calls(tmp_path: Path) -> None:
    counts = _calls(tmp_path)
    new, again = counts["new"], counts["again"]
    # A new page: its directory, its file (created, written, stamped, its sidecar attached,
    # renamed): one readlink of `current`, no tag index entry (no tags), nothing removed.
    assert new["mkdir"] <= PUTS + 2, new  # and /new/ itself, once (tried first)
    assert new["symlink"] == 0 and new["unlink"] == 0, new
    assert new["readlink"] == PUTS, new  # before: two, the second to look for a purge
    assert sum(new.values()) <= 11 * PUTS, new
    # The same page again: no directory made, the files a previous store may have left
    # (a detached sidecar, the body under its other name, a stale copy) removed.
    assert again["mkdir"] == 0 and again["readlink"] == PUTS, again
    assert sum(again.values()) <= 13 * PUTS, again
