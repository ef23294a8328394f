"""Node counters: every process counts into its own file; readers add them up."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from tenantkit import layout
from tenantkit.cache import nodecounters
from tenantkit.cache.nodecounters import (
    FLUSHES,
    RENDERS,
    STALE_SERVED,
    NodeCounters,
    read_node_counters,
)


def _count_in_child(cache_dir: str) -> None:
    counters = NodeCounters.for_dir(cache_dir)
    counters.add(FLUSHES, "blog", 2)
    counters.save()


def test_processes_add_up(tmp_path: Path) -> None:
    mine = NodeCounters.for_dir(tmp_path)
    mine.add(FLUSHES, "blog")
    mine.add(RENDERS, "shop", 3)
    mine.save()
    child = multiprocessing.get_context("fork").Process(target=_count_in_child,
                                                        args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    totals = read_node_counters(tmp_path)
    assert totals[FLUSHES] == {"blog": 3}
    assert totals[RENDERS] == {"shop": 3}
    assert totals[STALE_SERVED] == {}


def test_nothing_counted_reads_empty(tmp_path: Path) -> None:
    assert read_node_counters(tmp_path)[FLUSHES] == {}


@pytest.mark.parametrize("content", [b"{", b"[]", b'"x"', json.dumps(
    {FLUSHES: {"blog": "many", "ok": 2, "neg": -1}, "evil": {"x": 1}}).encode()])
def test_hostile_counter_files_are_skipped_or_filtered(tmp_path: Path, content: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    directory = layout.node_counters(tmp_path)
    directory.mkdir(parents=True)
    (directory / "bad.json").write_bytes(content)
    counters = NodeCounters(tmp_path)
    counters.add(FLUSHES, "ok", 1)
    counters.save()
    totals = read_node_counters(tmp_path)
    assert set(totals) == {"flushes", "purges", "coalesced", "renders", "stale_served"}
    assert totals[FLUSHES].get("blog") is None
    assert totals[FLUSHES]["ok"] == (3 if b'"ok": 2' in content else 1)


def test_a_fifo_counter_file_never_blocks(tmp_path: Path) -> None:
    directory = layout.node_counters(tmp_path)
    directory.mkdir(parents=True)
    os.mkfifo(directory / "fifo.json")
    assert read_node_counters(tmp_path)[FLUSHES] == {}


def test_a_count_never_waits_for_the_counter_file_to_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A STALE answer counts itself: its thread wrote the counter file once a second, and
    # waited for a busy disk meanwhile. (The disk is made slow by holding the write.)
    disk = threading.Event()
    real = nodecounters.write_atomic

    def slow_disk(*args: object, **kwargs: object) -> object:
        disk.wait(30)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nodecounters, "write_atomic", slow_disk)
    counters = NodeCounters(tmp_path)
    counted = threading.Event()

    def count() -> None:
        counters.add(STALE_SERVED, "blog")
        counted.set()

    threading.Thread(target=count, daemon=True).start()
    try:
        assert counted.wait(10), "add() waited for the counter file"
    finally:
        disk.set()
    deadline = time.monotonic() + 10
    while read_node_counters(tmp_path)[STALE_SERVED].get("blog") != 1:
        assert time.monotonic() < deadline, "the counter file was never written"
        time.sleep(0.01)
