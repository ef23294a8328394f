"""BackgroundRenders: bounded, and a full queue hands the render back to the caller."""

from __future__ import annotations

import threading

from tenantkit.web.background import BackgroundRenders


def test_renders_run_at_most_threads_at_once_and_a_full_queue_refuses() -> None:
    renders = BackgroundRenders(threads=1, max_queued=1)
    release = threading.Event()
    started = threading.Event()
    done: list[int] = []

    def slow() -> None:
        started.set()
        release.wait(10)
        done.append(1)

    try:
        assert renders.submit(slow)
        assert started.wait(10)            # the one thread runs it
        assert renders.submit(lambda: done.append(2))   # waits in the queue
        assert not renders.submit(lambda: done.append(3))  # full: the caller renders
        release.set()
        assert renders.wait_idle()
        assert done == [1, 2]
    finally:
        release.set()
        renders.stop()
    assert not renders.submit(lambda: None)  # stopped


def test_a_render_that_raises_does_not_stop_the_thread() -> None:
    renders = BackgroundRenders(threads=1)
    done: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    try:
        assert renders.submit(broken)
        assert renders.submit(lambda: done.append(1))
        assert renders.wait_idle()
        assert done == [1]
    finally:
        renders.stop()
