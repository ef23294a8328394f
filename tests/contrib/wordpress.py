"""A throwaway WordPress tree built from Debian's package, with the tenantkit drop-in.

``make_tree(dest, config)`` copies what must sit next to ``wp-load.php`` (the top-level PHP
files and ``wp-admin``, whose files find ``wp-load.php`` through ``__DIR__``), links
``wp-includes`` and the themes, installs ``contrib/wp-db-router.php`` as
``wp-content/db.php`` and ``contrib/tenantkit-tags.php`` as a must-use plugin, and writes our
own ``wp-config.php``: no file under /etc/wordpress or /usr/share/wordpress is touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from .phpcli import CONTRIB

WORDPRESS = Path(os.environ.get("TENANTKIT_WORDPRESS", "/usr/share/wordpress"))


def require_wordpress() -> Path:
    reason = ""
    if not (WORDPRESS / "wp-includes" / "class-wpdb.php").is_file():
        reason = f"WordPress not found in {WORDPRESS}: install it (apt-get install wordpress)"
    elif not (WORDPRESS / "wp-content" / "themes" / "twentytwentythree").is_dir():
        # Debian only recommends the default theme; without one every page is empty.
        reason = ("WordPress's default theme is missing: install it "
                  "(apt-get install wordpress-theme-twentytwentythree)")
    if reason:
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (TENANTKIT_REQUIRE_SERVICES=1 makes this a failure)")
        pytest.skip(reason)
    return WORDPRESS


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def php_literal(value: Any) -> str:
    """A PHP literal for a str/int/float/bool/None/list value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(php_literal(v) for v in value) + "]"
    raise TypeError(f"no PHP literal for {value!r}")


def make_tree(dest: Path, constants: dict[str, Any]) -> Path:
    source = require_wordpress()
    dest.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_file() and entry.suffix == ".php" and entry.name != "wp-config.php":
            shutil.copy2(entry, dest / entry.name)
    shutil.copytree(source / "wp-admin", dest / "wp-admin", copy_function=_link_or_copy)
    (dest / "wp-includes").symlink_to(source / "wp-includes")
    content = dest / "wp-content"
    (content / "plugins").mkdir(parents=True)
    (content / "uploads").mkdir()
    (content / "themes").symlink_to(source / "wp-content" / "themes")
    (content / "db.php").symlink_to(CONTRIB / "wp-db-router.php")
    # As `tenantkit provision --print-wp-config` says: the cache tags as a must-use plugin.
    (content / "mu-plugins").mkdir()
    (content / "mu-plugins" / "tenantkit-tags.php").symlink_to(CONTRIB / "tenantkit-tags.php")
    write_config(dest, constants)
    return dest


def write_config(tree: Path, constants: dict[str, Any], extra_php: str = "") -> None:
    base: dict[str, Any] = {
        "DB_CHARSET": "utf8mb4", "DB_COLLATE": "",
        "WP_DEBUG": True, "WP_DEBUG_DISPLAY": False, "WP_DEBUG_LOG": False,
        "DISABLE_WP_CRON": True, "AUTOMATIC_UPDATER_DISABLED": True,
        "WP_AUTO_UPDATE_CORE": False, "WP_HTTP_BLOCK_EXTERNAL": True,
    }
    for name in ("AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY", "AUTH_SALT",
                 "SECURE_AUTH_SALT", "LOGGED_IN_SALT", "NONCE_SALT"):
        base[name] = secrets.token_hex(16)
    base.update(constants)
    lines = ["<?php"]
    lines += [f"define({php_literal(k)}, {php_literal(v)});" for k, v in base.items()]
    lines += [line for line in extra_php.splitlines() if line.strip() != "<?php"]
    lines += ["$table_prefix = 'wp_';",
              "if (!defined('ABSPATH')) { define('ABSPATH', __DIR__ . '/'); }",
              "require_once ABSPATH . 'wp-settings.php';", ""]
    (tree / "wp-config.php").write_text("\n".join(lines))
