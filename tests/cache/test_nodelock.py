"""The node lock: one holder per node name and cache directory, released with its holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tenantkit.cache.nodelock import NodeLock


def test_one_holder_per_node_and_the_others_know_its_pid(tmp_path: Path) -> None:
    first, second = NodeLock(tmp_path, "web1"), NodeLock(tmp_path, "web1")
    other_node = NodeLock(tmp_path, "web2")
    try:
        assert first.acquire() and first.held
        assert not second.acquire() and not second.held
        assert second.holder() == os.getpid()
        assert other_node.acquire()  # another node's lock
        first.release()
        assert second.acquire()
    finally:
        for lock in (first, second, other_node):
            lock.release()


def test_the_lock_goes_with_its_holder_process(tmp_path: Path) -> None:
    script = ("import sys, time\nfrom tenantkit.cache.nodelock import NodeLock\n"
              "lock = NodeLock(sys.argv[1], 'web1')\nassert lock.acquire()\n"
              "print('held', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE)
    lock = NodeLock(tmp_path, "web1")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        assert not lock.acquire() and lock.holder() == proc.pid
        proc.kill()
        proc.wait()
        assert lock.acquire()
    finally:
        lock.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_hostile_lock_file_never_blocks_the_reader(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path, "web/../1")  # a node name is made file-safe
    assert lock.path.parent == tmp_path / "_node"
    lock.path.parent.mkdir()
    os.mkfifo(lock.path)  # reading a FIFO would wait for a writer forever
    assert lock.holder() is None
