"""PHP source for the configuration tenantkit writes for PHP programs (WordPress's
wp-config.php block, PunBB's forum map), and the values both PHP sides read the same way::

    php_string("it's")                # "'it\\'s'"
    php_literal({"a": [1, True]})     # "array(\n    'a' => array(...),\n)"
    php_bus_url(settings)             # "redis://127.0.0.1:6379/0?maxlen=500", or ""
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from tenantkit.config import BusSettings, Settings

__all__ = ["php_bus_url", "php_literal", "php_string"]

_DEFAULT_BUS = BusSettings()


def php_string(value: str) -> str:
    """A single-quoted PHP string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def php_literal(value: Any, indent: str = "") -> str:
    """*value* (str, int, bool, None, lists, tuples, dicts with str keys) as PHP source."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("a NUL byte cannot go into the forum map")
        return php_string(value)
    inner = indent + "    "
    if isinstance(value, list | tuple):
        items = [php_literal(v, inner) for v in value]
    elif isinstance(value, Mapping):
        items = [f"{php_literal(str(k))} => {php_literal(v, inner)}" for k, v in value.items()]
    else:
        raise TypeError(f"cannot write {type(value).__name__} as PHP")
    if not items:
        return "array()"
    return "array(\n" + "".join(f"{inner}{item},\n" for item in items) + indent + ")"


def php_bus_url(settings: Settings) -> str:
    """The event bus as contrib/tenantkit-events.php's ``tenantkit_publish`` reads it: the
    Redis URL with ``?stream=`` and ``?maxlen=`` when they differ from the defaults, or ``""``
    when ``[bus] transport`` is not ``"redis"`` (the in-process bus cannot reach PHP: the
    caller falls back to the site's ``.purge/`` trigger files)."""
    bus = settings.bus
    if bus.transport != "redis":
        return ""
    params = {}
    if bus.stream != _DEFAULT_BUS.stream:
        params["stream"] = bus.stream
    if bus.stream_maxlen != _DEFAULT_BUS.stream_maxlen:
        params["maxlen"] = str(bus.stream_maxlen)
    if not params:
        return bus.redis_url
    return bus.redis_url + ("&" if "?" in bus.redis_url else "?") + urlencode(params)
