"""Admin endpoints under ``/_tenantkit/``, on the configured admin hosts only.

Registered by :func:`~tenantkit.web.app.create_app` on top of the
:class:`~tenantkit.web.extension.Tenantkit` extension; configure them with::

    [web]
    admin_hosts = ["admin.example.org"]
    admin_token = "a long random string"

Every request needs ``Authorization: Bearer <admin_token>`` (or HTTP Basic with the token as
the password, so a browser can open the status page); the token is compared in constant
time. With no token configured the admin is off and answers 404.

State-changing requests (``POST``: reload, purge) cannot come from another site: they are
refused (403) with a ``Sec-Fetch-Site`` other than ``same-origin``/``none``, with an
``Origin`` other than the admin host's own, and, when authenticated only by HTTP Basic (which
a browser sends by itself once it knows it), unless they are JSON (a cross-site form cannot
send ``application/json``). Scripts use ``Authorization: Bearer``.

- ``GET /_tenantkit/health``: 200 or 503 with JSON details and the reason: no sites, the
  primary unreachable, the invalidator down (in this process, or as its status file tells:
  stale, or not connected to Redis or the replica binlog), Redis unreachable, the cache
  directory not writable -- what a load balancer must know;
- ``GET /_tenantkit/sites``: sites, hosts and backends as JSON, plus site-file errors;
- ``POST /_tenantkit/reload``: re-read the sites directory now;
- ``POST /_tenantkit/purge``: ``site`` and one of ``path`` (with ``host``), ``tag`` or
  ``all`` (JSON body or form);
- ``GET /_tenantkit/metrics``: Prometheus text format;
- ``GET /_tenantkit/``: the status page.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, jsonify, render_template_string, request

from tenantkit.cache.nodecounters import KINDS as NODE_KINDS
from tenantkit.config import mask_url
from tenantkit.secret import scrub

if TYPE_CHECKING:  # the extension registers this blueprint: no import at run time
    from tenantkit.web.extension import Tenantkit

__all__ = ["blueprint", "health_report"]

logger = logging.getLogger(__name__)

blueprint = Blueprint("tenantkit_admin", __name__, url_prefix="/_tenantkit")


def _ext() -> Tenantkit:
    ext: Tenantkit = current_app.extensions["tenantkit"]
    return ext


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


@blueprint.before_request
def _authorise() -> Response | None:
    ext = _ext()
    expected = ext.settings.web.admin_token
    if not expected:
        abort(404)
    presented = _presented_token()
    if presented is None or not hmac.compare_digest(presented.encode("utf-8", "replace"),
                                                    expected.encode("utf-8")):
        response = jsonify(error="missing or wrong admin token "
                                 "(send Authorization: Bearer <[web] admin_token>)")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="tenantkit", charset="UTF-8"'
        return response
    refused = _cross_site()
    if refused is not None:
        logger.warning("admin: %s %s refused: %s", request.method, request.path, refused)
        response = jsonify(error=f"refused: {refused} (state-changing admin requests come "
                                 "from the admin itself, or from scripts with "
                                 "Authorization: Bearer)")
        response.status_code = 403
        return response
    return None


def _cross_site() -> str | None:
    """Why this request must be refused as possibly cross-site; None when it may go on."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null"
                               or urlsplit(origin).netloc.lower() != request.host.lower()):
        return f"Origin {origin!r} is not this admin host"
    scheme = request.headers.get("Authorization", "").partition(" ")[0].lower()
    if scheme == "basic" and request.mimetype != "application/json":
        return ("a non-JSON request authenticated only by HTTP Basic, which a browser sends "
                "by itself")
    return None


@blueprint.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


# -- health ------------------------------------------------------------------------------

Check = Callable[["Tenantkit"], tuple[bool, dict[str, Any]]]


def _check_sites(ext: Tenantkit) -> tuple[bool, dict[str, Any]]:
    sites = ext.registry.sites
    errors = {str(path): message for path, message in ext.registry.errors.items()}
    details: dict[str, Any] = {"count": len(sites), "errors": errors}
    if not sites:
        details["reason"] = f"no site is loaded from {ext.settings.sites_dir}"
    return bool(sites), details


def _check_database(ext: Tenantkit) -> tuple[bool, dict[str, Any]]:
    router = ext.router()
    details: dict[str, Any] = {"primary": mask_url(str(ext.settings.database.primary))}
    started = time.monotonic()
    ok = True
    try:
        from sqlalchemy import text

        with router.engine("write").connect() as conn:
            conn.execute(text("SELECT 1"))
        details["primary_reachable"] = True
    except Exception as exc:
        ok = False
        details["primary_reachable"] = False
        details["primary_error"] = str(exc).splitlines()[0][:200]
        details["reason"] = f"the primary is unreachable: {details['primary_error']}"
    details["primary_seconds"] = round(time.monotonic() - started, 3)
    ok = _check_candidates(router, details) and ok
    lag = ext.replica_lag()
    details["replica_lag"] = lag
    threshold = ext.settings.database.lag_threshold
    if lag and all(v is None or v > threshold for v in lag.values()):
        details["replicas_usable"] = False
    return ok, details


def _check_candidates(router: Any, details: dict[str, Any]) -> bool:
    """With primary candidates (failover): which is the primary now, since when, and a
    split brain as an error. Adds nothing for a single primary."""
    if router.finder.single:
        return True
    state = router.primary_state()
    details["candidates"] = list(router.finder.names)
    details["primary_now"] = state.primary
    details["primary_changed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                  time.gmtime(state.changed_at))
    details["split_brain"] = state.split_brain
    if state.split_brain:
        details["reason"] = (f"split brain: {' and '.join(state.writable)} are all writable; "
                             "writes are refused until exactly one is (set the others "
                             "read-only)")
        return False
    return state.primary is not None


def _check_bus(ext: Tenantkit) -> tuple[bool, dict[str, Any]]:
    bus = ext.settings.bus
    details: dict[str, Any] = {"transport": bus.transport}
    invalidator = ext.invalidator()
    ok = True
    if invalidator is None:
        # Without background work (an embedding app, tests) nothing was meant to run here.
        details["invalidator"] = "down" if ext.background_expected else "not running here"
        ok = not ext.background_expected
    else:
        thread = getattr(invalidator, "_thread", None)
        alive = thread is not None and thread.is_alive()
        # "running" (this process is the node's actor) or "standby: node actor is pid N"
        details["invalidator"] = invalidator.state() if alive else "down"
        details["role"] = invalidator.role if alive else "down"
        details["node"] = invalidator.node
        details["events_handled"] = invalidator.handled
        details["errors"] = invalidator.errors
        ok = alive
    if not ok:
        details["reason"] = "the invalidator is not running on this node: purges are not applied"
    if bus.transport != "redis":
        return ok, details
    import redis

    details["redis"] = mask_url(bus.redis_url)
    timeout = ext.settings.database.connect_timeout
    try:
        client = redis.Redis.from_url(bus.redis_url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        details["connected"] = False
        details["error"] = str(exc)[:200]
        details["reason"] = f"Redis is unreachable: {details['error']}"
        return False, details
    details["connected"] = True
    return ok, details


def _check_cache(ext: Tenantkit) -> tuple[bool, dict[str, Any]]:
    """The cache directory takes a new file (what every stored page and purge needs)."""
    import os
    import tempfile

    directory = str(ext.settings.cache_dir)
    details: dict[str, Any] = {"dir": directory}
    try:
        os.makedirs(directory, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".health-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        details["writable"] = False
        details["reason"] = f"cache directory {directory} is not writable: {exc.strerror}"
        return False, details
    details["writable"] = True
    return True, details


def _check_invalidation(ext: Tenantkit) -> tuple[bool, dict[str, Any]]:
    """This node's invalidator as its status file tells (:mod:`tenantkit.cache.status`):
    down when the file is stale or it is not connected to the bus or the replica binlog. No
    file: nothing to tell (the ``bus`` check covers an invalidator in this process). With
    the node counters: what every process of the node did to its page caches, per kind and
    site (:mod:`tenantkit.cache.nodecounters`)."""
    from tenantkit.cache.nodecounters import read_node_counters
    from tenantkit.cache.status import read_status

    node = node_label(ext)
    status = read_status(ext.settings.cache_dir, node)
    details: dict[str, Any] = {"node": node, "reported": status is not None,
                               "counters": read_node_counters(ext.settings.cache_dir)}
    if status is None:
        return True, details
    problem = status.problem()
    details.update(source=status.source, transport=status.transport,
                   connected=status.connected, last_event=status.last_event, lag=status.lag,
                   dead_letters=status.dead_letters, handled=status.handled,
                   report_age=round(status.age(), 1), pid=status.pid)
    if problem:
        details["reason"] = problem
    return problem is None, details


CHECKS: dict[str, Check] = {"sites": _check_sites, "database": _check_database,
                            "bus": _check_bus, "invalidation": _check_invalidation,
                            "cache": _check_cache}


def health_report(ext: Tenantkit) -> tuple[bool, dict[str, Any]]:
    """Run every check; ``(all ok, {"status": ..., "checks": {name: details}})``."""
    results: dict[str, Any] = {}
    healthy = True
    for name, check in CHECKS.items():
        try:
            ok, details = check(ext)
        except Exception as exc:
            logger.exception("health check %s failed", name)
            ok, details = False, {"error": str(exc)}
        results[name] = {"ok": ok, **details}
        healthy = healthy and ok
    reasons = [f"{name}: {r.get('reason') or r.get('error') or 'failed'}"
               for name, r in results.items() if not r["ok"]]
    # Drivers quote what they parsed: a password with an "@" shows up as part of a host.
    urls = [ext.settings.database.primary, *ext.settings.database.replicas,
            *ext.settings.database.primaries, ext.settings.bus.redis_url]
    report: dict[str, Any] = {"status": "ok" if healthy else "unhealthy",
                              "node": node_label(ext), "checks": _scrubbed(results, urls)}
    if reasons:
        report["reasons"] = _scrubbed(reasons, urls)
    return healthy, report


def node_label(ext: Tenantkit) -> str:
    """This node's name, the one the invalidator uses (``[bus] node``, else the host name)."""
    from tenantkit.cache.transports.base import node_name

    invalidator = ext.invalidator()
    return invalidator.node if invalidator is not None else node_name(ext.settings)


def _scrubbed(value: Any, urls: list[str]) -> Any:
    """*value* with every string in it passed through :func:`tenantkit.secret.scrub`."""
    if isinstance(value, str):
        return scrub(value, urls)
    if isinstance(value, dict):
        return {k: _scrubbed(v, urls) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v, urls) for v in value]
    return value


@blueprint.get("/health")
def health() -> tuple[Response, int]:
    healthy, report = health_report(_ext())
    return jsonify(report), 200 if healthy else 503


# -- sites, reload, purge ------------------------------------------------------------------

def _site_json(ext: Tenantkit) -> dict[str, Any]:
    return {
        "sites": [
            {"name": s.name, "hosts": list(s.hosts), "backend": s.backend.type,
             "app": s.backend.app, "url": mask_url(s.backend.url) if s.backend.url else None,
             "cache": {"enabled": s.cache.enabled, "ttl": s.cache.ttl,
                       "policy": s.cache.policy}}
            for s in sorted(ext.registry.sites.values(), key=lambda s: s.name)
        ],
        "errors": {str(p): m for p, m in ext.registry.errors.items()},
    }


@blueprint.get("/sites")
def sites() -> Response:
    return jsonify(_site_json(_ext()))


@blueprint.post("/reload")
def reload() -> Response:
    report = _ext().reload()
    return jsonify(added=list(report.added), removed=list(report.removed),
                   changed=list(report.changed), failed=list(report.failed))


def _values(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return request.form.getlist(key) if not request.is_json else []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    abort(Response(f'"{key}" must be a string or a list of strings\n', 400,
                   mimetype="text/plain"))


@blueprint.post("/purge")
def purge() -> tuple[Response, int]:
    ext = _ext()
    data: dict[str, Any] = {}
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error="expected a JSON object such as "
                                 '{"site": "blog", "all": true}'), 400
        data = body
    name = data.get("site", request.form.get("site"))
    site = ext.registry.sites.get(name) if isinstance(name, str) else None
    if site is None:
        return jsonify(error=f"unknown site {name!r} (GET /_tenantkit/sites lists them)"), 404
    paths, tags = _values(data, "path"), _values(data, "tag")
    everything = data.get("all", request.form.get("all")) in (True, "1", "true", "yes")
    host = data.get("host", request.form.get("host")) or (site.hosts[0] if site.hosts else "")
    if not (paths or tags or everything):
        return jsonify(error='say what to purge: "path" (with "host"), "tag" or "all"'), 400
    try:
        how = ext.purge(site, host=str(host), paths=paths, tags=tags, everything=everything)
    except Exception as exc:
        logger.exception("purge of %s failed", site.name)
        return jsonify(error=f"purge failed: {exc}"), 500
    return jsonify(site=site.name, paths=paths, tags=tags, all=everything, via=how), 200


# -- metrics and the status page ------------------------------------------------------------

@blueprint.get("/metrics")
def metrics() -> Response:
    from tenantkit.web.metrics import CONTENT_TYPE

    return Response(_ext().metrics.render(), content_type=CONTENT_TYPE)


_STATUS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tenantkit status: {{ node }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<style>
 body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 66rem;
        color: #1d2433; background: #f6f7fb; padding: 0 1rem; }
 h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
 h2 { font-size: 1.1rem; margin: 1.8rem 0 .6rem; }
 .muted { color: #5b6475; }
 .badge { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; color: #fff;
          font-weight: 600; }
 .ok { background: #23824b; } .bad { background: #b3261e; }
 .scroll { overflow-x: auto; }
 table { border-collapse: collapse; width: 100%; background: #fff;
         box-shadow: 0 1px 3px rgba(0,0,0,.12); }
 th, td { text-align: left; padding: .5rem .75rem; border-bottom: 1px solid #e3e6ee; }
 td.n { text-align: right; font-variant-numeric: tabular-nums; }
 th { background: #2f3b59; color: #fff; font-weight: 600; }
 code { background: #eef0f6; padding: 0 .3rem; border-radius: .2rem; }
 .bar { background: #e3e6ee; border-radius: .3rem; height: .6rem; width: 6rem; }
 .bar span { display: block; height: 100%; border-radius: .3rem; background: #3d6fd8; }
 .err { color: #b3261e; white-space: pre-wrap; }
 @media (max-width: 40rem) { body { margin: 1rem auto; font-size: 14px; }
   th, td { padding: .35rem .4rem; } }
</style></head>
<body>
<h1>tenantkit <span class="badge {{ 'ok' if healthy else 'bad' }}">{{ report.status }}</span></h1>
<p class="muted">node <strong id="node">{{ node }}</strong> &middot; {{ sites|length }} sites
 &middot; {{ workers }} &middot; settings from {{ settings_source }}
 {% if refresh %}&middot; refreshes every {{ refresh }} s{% endif %}</p>
{% if report.reasons %}<ul class="err" id="reasons">{% for r in report.reasons %}
<li>{{ r }}</li>{% endfor %}</ul>{% endif %}
<h2>Sites</h2>
<div class="scroll"><table id="sites">
<tr><th>site</th><th>hosts</th><th>backend</th><th>requests</th><th>errors</th>
 <th>hit ratio</th><th>hits / misses / stale / bypass</th><th>upstream p50 / p99</th></tr>
{% for s in sites %}
<tr data-site="{{ s.name }}"><td><strong>{{ s.name }}</strong></td>
<td>{% for h in s.hosts %}<code>{{ h }}</code> {% endfor %}</td>
<td>{{ s.backend }}</td>
<td class="n requests">{{ s.requests|int }}</td>
<td class="n errors">{{ s.errors|int }}</td>
<td>{% if s.ratio is none %}<span class="muted">no traffic</span>{% else %}
 <div class="bar"><span style="width: {{ (s.ratio * 100)|round|int }}%"></span></div>
 {{ (s.ratio * 100)|round(1) }}%{% endif %}</td>
<td class="n">{{ s.hits|int }} / {{ s.misses|int }} / {{ s.stale|int }} / {{ s.bypass|int }}</td>
<td class="n">{{ s.p50 }} / {{ s.p99 }}</td></tr>
{% else %}
<tr><td colspan="8" class="muted">no sites loaded</td></tr>
{% endfor %}
</table></div>
<h2>Invalidator</h2>
<div class="scroll"><table id="invalidator">
<tr><th>node</th><th>transport</th><th>state</th><th>events handled</th><th>errors</th></tr>
<tr><td>{{ node }}</td><td>{{ bus.transport }}{% if bus.redis %} <code>{{ bus.redis }}</code>
 {% if bus.connected %}connected{% else %}<span class="err">not connected</span>{% endif %}
 {% endif %}</td>
 <td>{{ bus.invalidator }}</td><td class="n">{{ bus.events_handled|default('-') }}</td>
 <td class="n">{{ bus.errors|default('-') }}</td></tr>
</table></div>
{% if inval.reported %}
<div class="scroll"><table id="invalidation">
<tr><th>source</th><th>state</th><th>last purge</th><th>binlog lag</th><th>dead letters</th>
 <th>reported</th></tr>
<tr><td>{{ inval.source }}</td>
 <td>{% if inval.ok %}running{% else %}<span class="err">{{ inval.reason }}</span>{% endif %}</td>
 <td>{{ inval.last_event_ago }}</td>
 <td class="n">{{ '-' if inval.lag is none else '%.3f s'|format(inval.lag) }}</td>
 <td class="n">{{ inval.dead_letters }}</td><td class="n">{{ inval.report_age }} s ago</td></tr>
</table></div>
{% endif %}
<h2>Page caches of node {{ node }}</h2>
<p class="muted">every process of the node, since its counter files were made</p>
<div class="scroll"><table id="node-counters">
<tr><th>site</th><th>flushes</th><th>purges</th><th>coalesced</th><th>renders</th>
 <th>stale served</th></tr>
{% for c in node_counters %}
<tr data-site="{{ c.site }}"><td><strong>{{ c.site }}</strong></td>
 <td class="n flushes">{{ c.flushes }}</td><td class="n purges">{{ c.purges }}</td>
 <td class="n coalesced">{{ c.coalesced }}</td><td class="n renders">{{ c.renders }}</td>
 <td class="n stale_served">{{ c.stale_served }}</td></tr>
{% else %}
<tr><td colspan="6" class="muted">no sites loaded</td></tr>
{% endfor %}
</table></div>
<h2>Database</h2>
<div class="scroll"><table id="database">
<tr><th>server</th><th>state</th></tr>
<tr><td>primary <code>{{ db.primary|default('') }}</code></td>
 <td>{% if db.primary_reachable is not defined %}not checked{% elif db.primary_reachable %}
 reachable{% else %}<span class="err">unreachable: {{ db.primary_error }}</span>{% endif %}
 </td></tr>
{% if db.candidates is defined %}
<tr id="primary-now"><td>primary now</td>
 <td>{% if db.split_brain %}<span class="err">split brain: writes refused
 ({{ db.reason }})</span>{% elif db.primary_now %}<code>{{ db.primary_now }}</code>
 since {{ db.primary_changed_at }}{% else %}<span class="err">no writable candidate since
 {{ db.primary_changed_at }}</span>{% endif %}</td></tr>
{% for c in db.candidates %}<tr><td>candidate</td><td><code>{{ c }}</code></td></tr>
{% endfor %}
{% endif %}
{% for name, lag in db.get('replica_lag', {}).items() %}
<tr><td>replica <code>{{ name }}</code></td>
 <td>{{ 'down or unknown' if lag is none else '%.1f s behind'|format(lag) }}</td></tr>
{% endfor %}
</table></div>
<h2>Cache directory</h2>
<p>{{ cache.dir }}: {% if cache.writable %}writable{% else %}
 <span class="err">not writable</span>{% endif %}</p>
<h2>Site file errors</h2>
{% if errors %}<div class="scroll"><table><tr><th>file</th><th>error</th></tr>
{% for f, e in errors.items() %}
<tr><td><code>{{ f }}</code></td><td class="err">{{ e }}</td></tr>
{% endfor %}
</table></div>{% else %}<p class="muted">none</p>{% endif %}
</body></html>
"""


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "> 30 s"
    return f"\u2264 {value * 1000:g} ms" if value < 1 else f"\u2264 {value:g} s"


def _invalidation_row(check: dict[str, Any]) -> dict[str, Any]:
    last = check.get("last_event")
    ago = "none yet" if last is None else f"{max(0.0, time.time() - last):.1f} s ago"
    return {**check, "last_event_ago": ago}


@blueprint.get("/")
def status() -> str:
    import os

    ext = _ext()
    healthy, report = health_report(ext)
    stats = ext.metrics.site_stats()
    rows = []
    for s in sorted(ext.registry.sites.values(), key=lambda s: s.name):
        row = stats.get(s.name, {})
        c = row.get("cache", {})
        hits, stale, misses = c.get("HIT", 0.0), c.get("STALE", 0.0), c.get("MISS", 0.0)
        total = hits + stale + misses
        rows.append({"name": s.name, "hosts": s.hosts, "backend": s.backend.type,
                     "requests": row.get("requests", 0.0), "errors": row.get("errors", 0.0),
                     "hits": hits, "misses": misses, "stale": stale,
                     "bypass": c.get("BYPASS", 0.0),
                     "p50": _seconds(row.get("upstream_p50")),
                     "p99": _seconds(row.get("upstream_p99")),
                     "ratio": (hits + stale) / total if total else None})
    counts = report["checks"]["invalidation"].get("counters") or {}
    node_counters = [{"site": s.name, **{kind: counts.get(kind, {}).get(s.name, 0)
                                         for kind in NODE_KINDS}}
                     for s in sorted(ext.registry.sites.values(), key=lambda s: s.name)]
    refresh = request.args.get("refresh", "10")
    return render_template_string(
        _STATUS, healthy=healthy, report=report, sites=rows, node=report["node"],
        db=report["checks"]["database"], bus=report["checks"]["bus"],
        inval=_invalidation_row(report["checks"]["invalidation"]),
        cache=report["checks"]["cache"], node_counters=node_counters,
        refresh=int(refresh) if refresh.isdigit() else 10,
        workers="every worker" if ext.metrics.multiprocess else f"process {os.getpid()}",
        settings_source=ext.settings.source or "the embedded defaults",
        errors={str(p): m for p, m in ext.registry.errors.items()})
