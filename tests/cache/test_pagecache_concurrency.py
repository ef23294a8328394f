"""8 writer and 8 reader processes on one PageCache: no torn or mixed page, no lost purge."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
from pathlib import Path

from tenantkit.cache.pagecache import PageCache

HOST = "blog.example.org"
KEYS = ["/", "/a/", "/a/b/", "/feed"]
SECONDS = 2.0


def _version(db: Path, index: int) -> int:
    try:
        return os.stat(db / str(index)).st_size
    except FileNotFoundError:
        return 0


def _bump(db: Path, index: int) -> None:
    fd = os.open(db / str(index), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def _body(index: int, version: int) -> bytes:
    filler = hashlib.sha256(f"{index}:{version}".encode()).hexdigest().encode() * 200
    return f"{index}|{version}|".encode() + filler


def _writer(root: str, db: str, seed: int, deadline: float) -> None:
    cache = PageCache(root)
    rng = random.Random(seed)
    while time.time() < deadline:
        index = rng.randrange(len(KEYS))
        if rng.random() < 0.2:
            _bump(Path(db), index)
            cache.purge_tags([f"k:{index}"])
            continue
        with cache.begin_fill(HOST, KEYS[index]) as ticket:
            version = _version(Path(db), index)
            body = _body(index, version)
            if rng.random() < 0.5:
                time.sleep(rng.random() / 1000)
            cache.put(HOST, KEYS[index], body, tags=[f"k:{index}"], ticket=ticket,
                      headers=[("X-Check", hashlib.sha256(body).hexdigest())])


def _reader(root: str, deadline: float, errors: multiprocessing.Queue[str]) -> None:
    cache = PageCache(root)
    seen = 0
    while time.time() < deadline:
        for index, key in enumerate(KEYS):
            page = cache.get(HOST, key)
            if page is None:
                continue
            seen += 1
            check = dict(page.headers).get("X-Check")
            if check != hashlib.sha256(page.body).hexdigest():
                errors.put(f"mixed page at {key}: headers of another body")
            if not page.body.startswith(f"{index}|".encode()):
                errors.put(f"wrong page at {key}: {page.body[:20]!r}")
            parts = page.body.split(b"|")
            if page.body != _body(index, int(parts[1])):
                errors.put(f"torn page at {key}")
    errors.put(f"ok {seen}")


def test_writers_and_readers_never_see_torn_pages_or_lose_purges(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    db = tmp_path / "db"
    db.mkdir()
    PageCache(root)
    ctx = multiprocessing.get_context("fork")
    errors: multiprocessing.Queue[str] = ctx.Queue()
    deadline = time.time() + SECONDS
    procs = [ctx.Process(target=_writer, args=(str(root), str(db), i, deadline)) for i in range(8)]
    procs += [ctx.Process(target=_reader, args=(str(root), deadline, errors)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    messages = [errors.get(timeout=5) for _ in range(8)]
    errors.close()
    errors.join_thread()
    problems = [m for m in messages if not m.startswith("ok")]
    assert problems == []
    assert sum(int(m.split()[1]) for m in messages) > 0  # the readers did read pages
    cache = PageCache(root)
    for index, key in enumerate(KEYS):
        page = cache.get(HOST, key)
        if page is not None and not page.stale:
            # No purge was lost: a fresh page shows the latest version of its data.
            assert page.body == _body(index, _version(db, index)), key
