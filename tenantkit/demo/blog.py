"""A small blog with posts and comments: the demo's site app.

A site file points at the factory, which is called with the :class:`~tenantkit.sites.Site`::

    [backend]
    type = "wsgi"
    app = "tenantkit.demo.blog:create_blog"

Every statement goes through a :class:`~tenantkit.db.router.Router` built from the site;
pages carry ``X-Tenantkit-Tags`` (``home``, ``post:<id>``) for the page cache; a new comment
publishes ``CommentPosted`` after its commit (:func:`tenantkit.cache.hooks.install`), which
the node's invalidator turns into a purge of that post's pages.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, abort, redirect, render_template_string, request
from sqlalchemy import ForeignKey, String, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantkit.cache.hooks import install
from tenantkit.config import Settings
from tenantkit.db.router import Router
from tenantkit.sites import Site
from tenantkit.web.consistency import RouterTokens

__all__ = ["create_blog"]

MAX_FIELD = 2000


class Base(DeclarativeBase):
    pass


class Post(Base):
    __tablename__ = "demo_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)


class Comment(Base):
    __tablename__ = "demo_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("demo_posts.id"), index=True)
    author: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    approved: Mapped[bool] = mapped_column(default=True)
    created: Mapped[float] = mapped_column(default=time.time)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
 body { font: 16px/1.5 Georgia, serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem;
        color: #222; }
 header a { color: inherit; text-decoration: none; } .muted { color: #777; font-size: .9em; }
 .comment { border-left: 3px solid #ccd; padding-left: .8rem; margin: 1rem 0; }
 input, textarea { font: inherit; width: 100%; margin: .2rem 0 .6rem; }
</style></head><body>
<header><h1><a href="/">{{ blog }}</a></h1>
<p class="muted">rendered at {{ now }} by site <code>{{ site }}</code></p></header>
{% if post %}
<article><h2>{{ post.title }}</h2><p>{{ post.body }}</p></article>
<h3>{{ comments|length }} comment{{ '' if comments|length == 1 else 's' }}</h3>
{% for c in comments %}<div class="comment"><strong>{{ c.author }}</strong>
<p>{{ c.body }}</p></div>{% endfor %}
<form method="post" action="/post/{{ post.id }}/comment">
<label>Name <input name="author" maxlength="100" required></label>
<label>Comment <textarea name="body" rows="3" required></textarea></label>
<button>Post comment</button></form>
{% else %}
{% for p, n in posts %}<article><h2><a href="/post/{{ p.id }}/">{{ p.title }}</a></h2>
<p class="muted">{{ n }} comment{{ '' if n == 1 else 's' }}</p></article>{% endfor %}
{% endif %}
</body></html>
"""

_SEED = [
    ("Hello from {blog}", "This page comes from the page cache once it has been seen: look "
                          "at the X-Tenantkit-Cache response header."),
    ("How the cache is purged", "Post a comment below: this post's pages are purged on every "
                                "node, and the other blog's pages are left alone."),
]


def create_blog(site: Site, *, settings: Settings | None = None) -> Flask:
    """The blog WSGI app for *site* (title from ``[meta] title``)."""
    settings = settings if settings is not None else Settings.load()
    title = str(site.meta.get("title", site.name))
    router = Router.from_site(site, settings)
    Base.metadata.create_all(router.engine("write"))
    Session = router.sessionmaker()
    install(Session, site, tables={"demo_comments": "comment"}, settings=settings)
    with Session() as session:
        if session.scalar(select(func.count()).select_from(Post)) == 0:
            session.add_all(Post(title=t.format(blog=title), body=b) for t, b in _SEED)
            session.commit()

    app = Flask(f"tenantkit.demo.{site.name}")

    def page(**context: Any) -> str:
        return render_template_string(_PAGE, blog=title, site=site.name,
                                      now=time.strftime("%H:%M:%S"), **context)

    @app.get("/")
    def home() -> tuple[str, int, dict[str, str]]:
        with Session() as session:
            counts = (select(Post, func.count(Comment.id))
                      .outerjoin(Comment, Comment.post_id == Post.id)
                      .group_by(Post.id).order_by(Post.id))
            posts = [(p, n) for p, n in session.execute(counts)]
            return page(title=title, posts=posts), 200, {"X-Tenantkit-Tags": "home"}

    @app.get("/post/<int:post_id>/")
    def show(post_id: int) -> tuple[str, int, dict[str, str]]:
        with Session() as session:
            post = session.get(Post, post_id)
            if post is None:
                abort(404)
            comments = session.scalars(select(Comment).where(
                Comment.post_id == post_id, Comment.approved).order_by(Comment.id)).all()
            return (page(title=post.title, post=post, comments=comments), 200,
                    {"X-Tenantkit-Tags": f"post:{post_id}"})

    @app.post("/post/<int:post_id>/comment")
    def comment(post_id: int) -> Any:
        author = request.form.get("author", "").strip()[:100]
        body = request.form.get("body", "").strip()[:MAX_FIELD]
        if not author or not body:
            return "a comment needs a name (author) and a text (body)\n", 400
        with Session() as session:
            if session.get(Post, post_id) is None:
                abort(404)
            session.add(Comment(post_id=post_id, author=author, body=body))
            session.commit()  # the hooks publish CommentPosted after this
        return redirect(f"/post/{post_id}/", code=303)

    app.wsgi_app = RouterTokens(app.wsgi_app, router)  # type: ignore[method-assign]
    app.extensions["tenantkit.demo.router"] = router
    return app
