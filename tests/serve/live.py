"""A real `edgetune serve` process on a free loopback port, stopped by its PID."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT = 120
URL = re.compile(r"serving .* on (http://\S+)")


class LiveServer:
    """`edgetune serve ARGS --port 0`; `url` once it listens. Use as a context manager."""

    def __init__(self, *args: str, log_dir: Path, env: dict | None = None, preexec_fn=None):
        self.log = Path(log_dir) / f"server-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "edgetune.cli", "serve", *map(str, args), "--port", "0"]
        self._stderr = open(self.log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=preexec_fn,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(Path(log_dir) / "state"), **(env or {})},
        )
        self.url = self._wait_for_url()
        self.pid = self.proc.pid

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                match = URL.search(line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the server did not start: {self.log.read_text()[-3000:]}")

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def get(self, path: str, key: str | None = None, timeout: float = 10) -> tuple[int, dict | str]:
        """GET path -> (status, JSON body or text)."""
        return self.request("GET", path, None, key, timeout)

    def request(
        self,
        method: str,
        path: str,
        body=None,
        key: str | None = None,
        timeout: float = 10,
        raw: bytes | None = None,
        headers: dict | None = None,
    ) -> tuple[int, dict | str]:
        """An HTTP request -> (status, JSON body or text)."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self._stderr.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
