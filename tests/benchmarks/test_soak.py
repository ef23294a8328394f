"""The soak's figures (benchmarks/soak.py), on made-up measurements: no servers, no load."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import Report
from benchmarks.soak import (
    STEADY,
    Comment,
    Sample,
    Window,
    counter_delta,
    excluded_seconds,
    generation,
    is_stale,
    page_facts,
    per_second,
    renders_per_page_per_purge,
    segment_of,
    segment_rows,
    segment_table,
    segments,
    server_hit_durations,
    show_delays,
    table,
    throughput_figures,
)
from tenantkit.cache.nodecounters import FLUSHES, KINDS, RENDERS

PHP = Window("php paused", 50.0, 55.0)


def test_segments_run_from_each_fault_to_the_next() -> None:
    cuts = segments([Window("b", 30, 30.2), Window("a", 10, 18)], 60)
    assert cuts == [(STEADY, 0.0, 10), ("a", 10, 30), ("b", 30, 60)]
    assert [segment_of(t, cuts) for t in (0, 9.99, 10, 29.9, 30, 59.9, 60)] == [
        STEADY, STEADY, "a", "a", "b", "b", None]


def test_per_second_counts_whole_seconds_of_the_load_only() -> None:
    assert per_second([0.1, 0.9, 1.0, 2.5, 2.99, 3.0, -0.1], 3) == [2, 1, 2]


def test_throughput_floor_ignores_the_php_pause_and_the_warmup() -> None:
    buckets = [5, 100, 100, 110, 90, 100, 60, 2, 1, 40, 100]
    skip = excluded_seconds(Window("php paused", 7.2, 8.5))
    assert skip == {7, 8, 9}
    rate, low, at = throughput_figures(buckets, steady_end=6.0, skip=skip)
    assert rate == 100          # median of seconds 2..5 (0 and 1 are the warm-up)
    assert (low, at) == (5, 0)  # second 0 is outside the pause: it counts
    rate, low, at = throughput_figures(buckets, 6.0, skip | {0})
    assert (low, at) == (60, 6)


def _comment(sent: float, acked: float | None, shown: float | None,
             held: bool = False) -> Comment:
    return Comment("soakabcdefx00001", 1, sent, acked=acked, shown=shown, held=held)


def test_show_delays_leave_out_the_php_pause_and_count_the_never_shown() -> None:
    comments = [
        _comment(10, 10.2, 11.0),   # 0.8 s
        _comment(20, 20.1, 20.0),   # seen before the acknowledgement came back: 0
        _comment(47, 47.1, 58.0),   # sent 3 s before the pause: left out
        _comment(54, 60.0, 61.0),   # sent during the pause: left out
        _comment(56, 56.1, 57.0),   # after the pause: 0.9 s
        _comment(70, 70.1, None),   # never shown: 100 - 70.1
        _comment(71, None, None),   # not acknowledged: not a write to show
        _comment(72, 72.1, None, held=True),  # held for moderation: never shown, rightly
    ]
    counted, left_out, never = show_delays(comments, PHP, settle_end=100.0)
    assert counted == pytest.approx([0.8, 0.0, 0.9, 29.9])
    assert left_out == pytest.approx([10.9, 1.0])
    assert never == 1
    counted, left_out, _ = show_delays(comments, None, settle_end=100.0)
    assert len(counted) == 6 and left_out == []


def test_a_page_is_stale_when_its_comments_or_counts_are_not_the_fresh_ones() -> None:
    fresh = (b"<h1>Hello [2 comments]</h1><p>Comment soak0a1b2cx00001</p>"
             b"<p>Comment soak0a1b2cx00004</p><a>Next [0 comments]</a>")
    assert page_facts(fresh) == (frozenset({b"soak0a1b2cx00001", b"soak0a1b2cx00004"}), (2, 0))
    truth = {"soak0a1b2cx00001", "soak0a1b2cx00004"}
    assert not is_stale(fresh, fresh, truth)
    assert not is_stale(fresh.replace(b"<h1>", b"<h1 class=x>"), fresh, truth)
    older = fresh.replace(b"[2 comments]", b"[1 comments]")
    assert is_stale(older, fresh, truth)
    missing = fresh.replace(b"soak0a1b2cx00004", b"")
    assert is_stale(missing, fresh, truth)
    # A fresh render that itself lags the database (a post's page) is no excuse.
    assert is_stale(missing, missing, truth)
    assert not is_stale(missing, missing, None)  # a front page: no comments to compare


def test_counter_delta_and_renders_per_page_per_purge() -> None:
    before = {FLUSHES: {"a": 2}, RENDERS: {"a": 10}}
    after = {FLUSHES: {"a": 7, "b": 1}, RENDERS: {"a": 30}}
    delta = counter_delta(before, after)
    assert set(delta) == set(KINDS)
    assert delta[FLUSHES] == {"a": 5, "b": 1} and delta[RENDERS] == {"a": 20}
    assert renders_per_page_per_purge(20, 5, 4) == 1.0
    assert renders_per_page_per_purge(40, 5, 4) == 2.0
    assert renders_per_page_per_purge(3, 0, 4) is None


def test_generation_reads_the_current_link(tmp_path: Path) -> None:
    pages = tmp_path / "blog" / "pages"
    pages.mkdir(parents=True)
    assert generation(tmp_path, "blog") is None
    (pages / "g12").mkdir()
    (pages / "current").symlink_to("g12")
    assert generation(tmp_path, "blog") == 12


def test_table_says_pass_fail_or_no_data_and_overall() -> None:
    report = Report("soak", "t")
    report.add_value("writes", "lost", 0, "comments")
    report.target("met", True)
    assert table(report).endswith("- PASS    met\nOVERALL: PASS")
    report.target("missed", False)
    report.target("not measured", None)
    text = table(report)
    assert "- FAIL    missed" in text and "- NO DATA not measured" in text
    assert text.endswith("OVERALL: FAIL")
    assert "| writes | lost |" in text


def test_server_hit_durations_read_the_access_log_between_offsets(tmp_path: Path) -> None:
    log = tmp_path / "shim.log"
    warm = b'"GET / HTTP/1.1" 200 5 "-" "-" site=a host=a cache=HIT duration=0.9000 upstream=-\n'
    load = (b'"GET / HTTP/1.1" 200 5 "-" "-" site=a host=a cache=HIT duration=0.0020 x\n'
            b'"GET / HTTP/1.1" 200 5 "-" "-" site=a host=a cache=MISS duration=2.5000 x\n'
            b'"GET / HTTP/1.1" 200 5 "-" "-" site=a host=a cache=HIT duration=0.0400 x\n')
    log.write_bytes(warm + load + warm)
    line = server_hit_durations(log, len(warm), len(warm) + len(load))
    assert line.endswith("(access log, 2 HITs): p99 40.0 ms, worst 40.0 ms")
    assert "not in its access log" in server_hit_durations(log, 0, 0)


def test_segment_rows_count_what_each_fault_did() -> None:
    cuts = segments([Window("redis paused", 2.5, 4.0)], 6)
    samples = [Sample(0.5, 0.001, 200, "HIT", 0), Sample(1.5, 0.002, 200, "HIT", 0),
               Sample(1.6, 0.5, 200, "MISS", 1),
               Sample(2.6, 0.3, 503, "MISS", 1), Sample(3.1, 30.0, 0, "", 1),
               Sample(3.2, 0.020, 200, "HIT", 2), Sample(3.3, 0.001, 200, "STALE", 2),
               Sample(5.5, 0.004, 200, "HIT", 2)]
    steady, paused = segment_rows(samples, cuts)
    assert (steady.requests, steady.errors, steady.miss, steady.low) == (3, 0, 1, 1)
    assert steady.worst_hit == 0.002 and steady.codes == {}
    assert (paused.requests, paused.errors, paused.unanswered, paused.stale) == (5, 1, 1, 1)
    assert paused.codes == {503: 1, 0: 1}
    assert paused.low == 0      # whole seconds 3, 4, 5: nothing ended in second 4
    assert paused.worst_hit == 0.020
    lines = segment_table([steady, paused])
    assert lines[0].split()[:3] == ["segment", "from", "s"]
    assert lines[2].split()[:9] == ["redis", "paused", "2.5", "5", "1", "1", "1", "1", "0"]
