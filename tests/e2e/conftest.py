"""End-to-end fixtures: real gunicorn, nginx and Chromium processes on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

WEB_TESTS = Path(__file__).resolve().parent.parent / "web"
if str(WEB_TESTS) not in sys.path:
    sys.path.insert(0, str(WEB_TESTS))  # tk_test_apps and tk_web live there
