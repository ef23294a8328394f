"""Real processes for the end-to-end tests: nginx, and the shim (gunicorn or werkzeug) from
:mod:`tenantkit.testing.commands`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tenantkit.testing import wait_port
from tenantkit.testing.commands import TENANTKIT, Shim, stop

__all__ = ["TENANTKIT", "Nginx", "Shim", "need", "shim_env", "stop"]

REQUIRE = os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1"
ROOT = Path(__file__).resolve().parents[2]
WEB_TESTS = ROOT / "tests" / "web"


def need(binary: str, package: str, *candidates: str) -> str:
    """Path of *binary*, or skip (fail under TENANTKIT_REQUIRE_SERVICES=1) naming the package."""
    found = shutil.which(binary) or next((c for c in candidates if os.access(c, os.X_OK)), None)
    if found is None:
        message = f"{binary} is not installed (apt-get install {package})"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    return found


class Nginx:
    """nginx as a child process with a temporary prefix and ``daemon off``."""

    def __init__(self, workdir: Path, server_block: str) -> None:
        self.binary = need("nginx", "nginx-light", "/usr/sbin/nginx")
        self.prefix = workdir / "nginx"
        (self.prefix / "logs").mkdir(parents=True)
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            ""
            # The test's temporary directories are private to us: workers run as our user.
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "worker_processes 1;\n"
            f"pid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/logs/error.log warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "    access_log off;\n"
            f"    client_body_temp_path {self.prefix}/body;\n"
            f"    proxy_temp_path {self.prefix}/proxy;\n"
            f"    fastcgi_temp_path {self.prefix}/fastcgi;\n"
            f"    uwsgi_temp_path {self.prefix}/uwsgi;\n"
            f"    scgi_temp_path {self.prefix}/scgi;\n"
            + server_block + "\n}\n")
        self.log = self.prefix / "logs" / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-c", str(self.conf),
                 "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, proc=self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT)


def shim_env(sites_dir: Path, cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    env.update({
        "TENANTKIT_SITES_DIR": str(sites_dir), "TENANTKIT_CACHE_DIR": str(cache_dir),
        "TENANTKIT_DATABASE_PRIMARY": f"sqlite:///{cache_dir.parent}/tenantkit.db",
        "PYTHONPATH": os.pathsep.join([str(WEB_TESTS), env.get("PYTHONPATH", "")]),
    })
    env.update(extra)
    return env
