"""After-commit hooks on a real MariaDB primary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, Integer, String, create_engine, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tenantkit.cache.events import (
    CommentChanged,
    CommentPosted,
    Event,
    PostDeleted,
    PostEdited,
    with_gtid,
)
from tenantkit.cache.hooks import install
from tenantkit.cache.transports import LocalTransport
from tenantkit.sites import Backend, Site
from tenantkit.testing import MariaDBCluster

SITE = Site(name="blog", hosts=("blog.example.org",), backend=Backend(type="proxy", url="x"))


class Base(DeclarativeBase):
    pass


class Comment(Base):
    __tablename__ = "wp_comments"
    comment_ID: Mapped[int] = mapped_column(Integer, primary_key=True)
    comment_post_ID: Mapped[int] = mapped_column(Integer)
    comment_approved: Mapped[str] = mapped_column(String(20))


class Post(Base):
    __tablename__ = "wp_posts"
    ID: Mapped[int] = mapped_column(Integer, primary_key=True)
    post_author: Mapped[int] = mapped_column(Integer)
    post_title: Mapped[str] = mapped_column(String(100))


class Option(Base):
    __tablename__ = "wp_options"
    option_id: Mapped[int] = mapped_column(Integer, primary_key=True)


@pytest.fixture
def engine(mariadb_pair: MariaDBCluster) -> Iterator[Engine]:
    engine = create_engine(mariadb_pair.primary_url)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def transport(tmp_path: Path) -> LocalTransport:
    return LocalTransport(tmp_path / "cache")


def _events(transport: LocalTransport, consumer: object) -> list[Event]:
    messages = consumer.poll(0.5)  # type: ignore[attr-defined]
    return [m.event for m in messages]


def _plain(events: list[Event]) -> list[Event]:
    assert all(e.gtid for e in events)
    return [with_gtid(e, None) for e in events]


def test_commit_publishes_with_the_commit_gtid(engine: Engine, transport: LocalTransport,
                                               mariadb_pair: MariaDBCluster) -> None:
    factory = sessionmaker(engine)
    remove = install(factory, SITE, settings=None, transport=transport)
    consumer = transport.consumer("t")
    try:
        with factory() as session:
            session.add(Comment(comment_ID=1, comment_post_ID=42, comment_approved="1"))
            session.add(Post(ID=42, post_author=3, post_title="hello"))
            session.flush()
            assert _events(transport, consumer) == []  # nothing before the commit
            session.commit()
        events = _events(transport, consumer)
        gtid = mariadb_pair.primary.query("SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
        assert sorted(events, key=lambda e: e.type) == [
            CommentPosted("blog", 42, True, gtid=gtid), PostEdited("blog", 42, author=3, gtid=gtid)]
        assert all(e.gtid == gtid for e in events)
    finally:
        consumer.close()
        remove()


def test_rollback_publishes_nothing(engine: Engine, transport: LocalTransport) -> None:
    factory = sessionmaker(engine)
    remove = install(factory, SITE, transport=transport)
    consumer = transport.consumer("t")
    try:
        with factory() as session:
            session.add(Comment(comment_ID=2, comment_post_ID=42, comment_approved="1"))
            session.flush()
            session.rollback()
        with factory() as session:  # a failed commit is a rollback too
            session.add(Comment(comment_ID=3, comment_post_ID=1, comment_approved="1"))
            session.commit()
        with pytest.raises(Exception, match="Duplicate"), factory() as session:
            session.add(Comment(comment_ID=3, comment_post_ID=1, comment_approved="1"))
            session.commit()
        events = _events(transport, consumer)
        assert [(e.type, e.post_id) for e in events] == [("comment_posted", 1)]  # type: ignore
    finally:
        consumer.close()
        remove()


def test_changes_deletes_and_bulk_statements(engine: Engine, transport: LocalTransport) -> None:
    factory = sessionmaker(engine)
    with factory() as session:
        session.add_all([Comment(comment_ID=5, comment_post_ID=7, comment_approved="0"),
                         Post(ID=7, post_author=1, post_title="t"), Option(option_id=1)])
        session.commit()
    remove = install(factory, SITE, {Comment: "comment", "wp_posts": "post",
                                     "wp_options": "site"}, transport=transport)
    consumer = transport.consumer("t")
    try:
        with factory() as session:
            comment = session.get(Comment, 5)
            assert comment is not None
            comment.comment_approved = "spam"  # pending -> spam: never visible
            session.commit()
        assert _plain(_events(transport, consumer)) == [CommentChanged("blog", 7, False)]
        with factory() as session:
            comment = session.get(Comment, 5)
            assert comment is not None
            comment.comment_approved = "1"
            session.commit()
        assert [e.approved for e in _events(transport, consumer)] == [True]  # type: ignore
        with factory() as session:
            post = session.get(Post, 7)
            session.delete(post)
            session.commit()
        assert _plain(_events(transport, consumer)) == [PostDeleted("blog", 7, author=1)]
        with factory() as session:
            session.execute(update(Comment).values(comment_approved="1"))
            session.execute(text("SELECT 1"))
            session.commit()
        assert _plain(_events(transport, consumer)) == [CommentChanged("blog", None, True)]
    finally:
        consumer.close()
        remove()


def test_bad_table_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind 'page'"):
        install(sessionmaker(), SITE, {"wp_posts": "page"})


def test_sqlite_has_no_gtid(tmp_path: Path, transport: LocalTransport) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    Base.metadata.create_all(engine)
    remove = install(Session, SITE, transport=transport)
    consumer = transport.consumer("t")
    try:
        with Session(engine) as session:
            session.add(Post(ID=1, post_author=1, post_title="t"))
            session.commit()
        assert _events(transport, consumer) == [PostEdited("blog", 1, author=1, gtid=None)]
    finally:
        consumer.close()
        remove()
        engine.dispose()


def test_router_sessions_publish_with_the_router_token(
        engine: Engine, transport: LocalTransport, mariadb_pair: MariaDBCluster) -> None:
    from tenantkit.db.router import Router

    router = Router(mariadb_pair.primary_url, [mariadb_pair.replica_url])
    remove = install(router, SITE, transport=transport)
    consumer = transport.consumer("t")
    other = sessionmaker(engine)  # not the router's: ignored by these hooks
    try:
        with other() as session:
            session.add(Post(ID=90, post_author=1, post_title="elsewhere"))
            session.commit()
        assert _events(transport, consumer) == []
        with router.session() as session:
            session.add(Comment(comment_ID=9, comment_post_ID=90, comment_approved="1"))
            session.commit()
        gtid = mariadb_pair.primary.query("SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
        assert _events(transport, consumer) == [CommentPosted("blog", 90, True, gtid=gtid)]
        token = router.last_token()
        assert token is not None and token.gtid == gtid
    finally:
        consumer.close()
        remove()
        router.close()
