"""Contenders as child processes: per-child peak RSS, a memory watchdog, alternation, logging.

Every contender runs in its own child process, started as
`python benchmarks/<file>.py child '<json options>'`; the child prints one JSON object
as its last stdout line, with its own peak RSS (`VmHWM` of /proc/self/status, which starts
afresh at `exec`). The parent reaps it with `os.wait4` for its CPU time; wait4's `ru_maxrss`
is kept across `exec`, so it counts the parent's peak before the fork too (a parent that
built a bundle in-process made its children look 300 MB bigger) and is only the fallback.
"""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENCH = ROOT / "artifacts" / "bench"  # git-ignored scratch space
MEM_GUARD_BYTES = 3 * 2**30  # kill a child when the machine gets this close to OOM
PEAK_KEY = "_own_peak_rss_bytes"  # a child's own peak RSS, added to its result line by child_main
# PyTorch's OpenMP threads spin-wait by default; edgetune's ORT sessions are set not to spin
# (allow_spinning=0). On a shared, oversubscribed machine spinning costs PyTorch up to ~5x,
# so the PyTorch contenders run with the same no-spin policy; the default is a labelled extra.
NO_SPIN = {"OMP_WAIT_POLICY": "PASSIVE"}


def log(message: str) -> None:
    """Progress on stderr (stdout's last line is reserved for the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def run_child(cmd: list, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run `cmd`, return {"result": last-line JSON or None, "peak_rss_bytes", "wall_s", "rc", "error"}.

    A watchdog kills the child on timeout or when MemAvailable drops under MEM_GUARD_BYTES
    (the machine is shared: an OOM would hit other people's jobs).
    """
    out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process below)
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, cwd=ROOT, env={**os.environ, **(env or {})})
    killed = []

    def watch():
        while proc.returncode is None and not killed:
            if time.perf_counter() - started > timeout:
                killed.append(f"timeout after {timeout:.0f} s")
            elif mem_available() < MEM_GUARD_BYTES:
                killed.append(f"memory guard: MemAvailable < {MEM_GUARD_BYTES / 2**30:.0f} GiB")
            if killed:
                proc.kill()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    out.seek(0)
    err.seek(0)
    lines = [line for line in out.read().splitlines() if line.strip()]
    stderr = err.read()
    result = None
    if lines:
        with contextlib.suppress(json.JSONDecodeError):
            result = json.loads(lines[-1])
    error = None
    if proc.returncode != 0 or result is None:
        tail = [line for line in stderr.splitlines() if line.strip()][-3:]
        saved = BENCH / "logs" / f"{time.strftime('%H%M%S')}-{proc.pid}.stderr"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(stderr)
        error = (killed[0] + "; " if killed else "") + f"rc={proc.returncode}: " + " | ".join(tail)[-600:]
        error += f" (stderr: {saved.relative_to(ROOT)})"
    own_peak = result.pop(PEAK_KEY, None) if isinstance(result, dict) else None
    return {
        "result": result,
        "peak_rss_bytes": own_peak or usage.ru_maxrss * 1024,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "loadavg": [load_before, os.getloadavg()[0]],
        "rc": proc.returncode,
        "error": error,
        "stdout": lines,
    }


def child_cmd(script: str, options: dict) -> list:
    """The command that runs `benchmarks/<script>` as a child with `options`."""
    return [PYTHON, ROOT / "benchmarks" / script, "child", json.dumps(options)]


def child_main(handlers: dict) -> None:
    """Entry point of a child: `child '<json>'` -> handlers[options['impl']](options) -> JSON line."""
    options = json.loads(sys.argv[2])
    result = handlers[options["impl"]](options)
    print(json.dumps({**result, PEAK_KEY: own_peak_rss()}), flush=True)


def own_peak_rss() -> int | None:
    """This process's peak RSS in bytes since its exec (VmHWM), or None off Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def alternate(contenders: dict, rounds: int, run) -> dict:
    """Run `run(name, options)` for each contender in turn, `rounds` times (A B A B ...)."""
    results = {name: [] for name in contenders}
    for r in range(rounds):
        for name, options in contenders.items():
            log(f"  round {r + 1}/{rounds}: {name}")
            results[name].append(run(name, options))
    return results


def median(values):
    """The median of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
