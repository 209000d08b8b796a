"""A real Flower fleet on loopback for tests and benchmarks: one flower-superlink, N flower-supernode.

Every process (and what it spawned: Flower's SuperExec and app processes) is stopped by
PID when the fleet closes. Ports are free 127.0.0.1 ports; FLWR_HOME is a fresh folder
with the connection `fleet`; Flower's dependency install is off.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr, flower-superexec


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class LocalFleet:
    """`with LocalFleet(tmp) as fleet: fleet.add_node(bundle, data); fleet.run(app_dir)`.

    tls: {"ca": ca.crt, "cert": server.pem, "key": server.key} for HTTPS (else --insecure).
    """

    def __init__(self, folder: Path, tls: dict | None = None):
        self.folder = Path(folder)
        self.home = self.folder / "flwr_home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        security = f'root-certificates = "{tls["ca"]}"' if tls else "insecure = true"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\naddress = "127.0.0.1:{self.port}"\n{security}\n'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.known: dict[int, psutil.Process] = {}  # every PID seen under our processes

    def __enter__(self) -> "LocalFleet":
        if self.tls:
            security = ["--ssl-ca-certfile", self.tls["ca"], "--ssl-certfile", self.tls["cert"]]
            security += ["--ssl-keyfile", self.tls["key"]]
        else:
            security = ["--insecure"]
        cmd = [BIN / "flower-superlink", *security, "--port", self.port, "--disable-runtime-dependency-installation"]
        link = self._start("superlink", cmd)
        wait_listening(self.port, link)
        return self

    def add_node(self, name: str, bundle: Path, data: Path) -> subprocess.Popen:
        """Start one SuperNode with its bundle and data in its node config."""
        port = free_port()
        node_config = f'bundle="{bundle}" data="{data}"'
        security = ["--root-certificates", self.tls["ca"]] if self.tls else ["--insecure"]
        cmd = [BIN / "flower-supernode", *security, "--superlink", f"127.0.0.1:{self.port}", "--port", str(port)]
        proc = self._start(name, [*cmd, "--node-config", node_config])
        wait_listening(port, proc)
        return proc

    def start_run(self, app_dir: Path) -> subprocess.Popen:
        """Start `flwr run APP fleet --stream` (its output in flwr_run.log)."""
        cmd = [BIN / "flwr", "run", str(app_dir), "fleet", "--stream"]
        with open(self.folder / "flwr_run.log", "w") as log:
            proc = subprocess.Popen([str(c) for c in cmd], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs["flwr-run"] = proc
        return proc

    def wait_run(self, timeout: float) -> int:
        """Wait for the started run (at most `timeout` seconds); stop it by PID; return its exit code."""
        proc = self.procs["flwr-run"]
        try:
            proc.wait(timeout=timeout)
        finally:
            self._stop("flwr-run")
        return proc.returncode

    def run(self, app_dir: Path, timeout: float) -> int:
        """`flwr run APP fleet --stream`, bounded by `timeout` seconds; its exit code."""
        self.start_run(app_dir)
        return self.wait_run(timeout)

    def kill_node(self, name: str) -> None:
        """SIGKILL one SuperNode and what it spawned (a device losing power)."""
        self._remember()
        proc = self.procs[name]
        for child in self._descendants(proc.pid):
            _signal(child, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        """Everything process `name` wrote so far."""
        return (self.folder / f"{name}.log").read_text()

    def _start(self, name: str, cmd: list) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen([str(c) for c in cmd], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def _descendants(self, pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _remember(self) -> None:
        """Note every live descendant of our processes (detached ones included) by PID."""
        for proc in self.procs.values():
            for child in self._descendants(proc.pid):
                self.known[child.pid] = child

    def _stop(self, name: str) -> None:
        self._remember()
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        self._remember()
        for name in list(self.procs):
            self._stop(name)
        for child in self.known.values():
            _signal(child, signal.SIGKILL)
        psutil.wait_procs(list(self.known.values()), timeout=10)


def _signal(proc: psutil.Process, sig: int) -> None:
    """Send `sig` to a process we started (directly or through Flower), if it still runs as the same process."""
    try:
        if proc.is_running():
            proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
