"""Fuzz: flip bytes in and truncate every bundle file and every checkpoint file, one at a time.

Each damaged copy is opened the ways a device opens it (generate two tokens; train one step
into a run folder; resume a run from a damaged checkpoint). Every case must end in success
or in an EdgetuneError (the CLI's one line), never in another exception (a traceback) or a
crash, and nothing outside the run folder may change (the bundle's verify cache aside).
Bundle files are damaged twice: as they are (the manifest's hashes catch it), and with the
manifest recomputed, as anyone without a signing key can, so that every parser behind the
hashes meets the damage too. The cases run in a child process, so a crash is caught and
named. Bounded in time: BUDGET_S for all of it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

BUDGET_S = 420
RUN = "run"


def _mutations(size: int) -> list[tuple[str, object]]:
    """(name, how) pairs: byte flips at the start, a quarter, the middle and the end; two truncations."""
    offsets = sorted({0, size // 4, size // 2, max(size - 1, 0)}) if size else []
    return [(f"flip@{o}", ("flip", o)) for o in offsets] + [
        ("truncate-half", ("cut", size // 2)),
        ("empty", ("cut", 0)),
    ]


def _damage(path: Path, how) -> None:
    kind, at = how
    if kind == "cut":
        with open(path, "r+b") as f:
            f.truncate(at)
        return
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def _snapshot(root: Path, skip: set[str]) -> dict[str, str]:
    """sha256 of every file under root, but those under the names in `skip` and verify caches."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        cache = path.name == ".edgetune-verified.json"
        if path.is_file() and not path.is_symlink() and rel.split("/")[0] not in skip and not cache:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _attempt(action) -> str:
    """'ok', 'refused: <one line>', or 'BUG: <traceback>' for anything but an EdgetuneError."""
    from edgetune.common.errors import EdgetuneError

    try:
        action()
        return "ok"
    except EdgetuneError as e:
        message = str(e)
        return f"refused: {message}" if "\n" not in message else f"BUG: a multi-line error: {message!r}"
    except Exception:
        return "BUG: " + traceback.format_exc()


def run_cases(pristine_bundle: str, root: str, data: str) -> None:
    """The child process: every case, one JSON line each on stdout."""
    from edgetune.options import TrainConfig
    from edgetune.runtime.generate import Generator
    from edgetune.runtime.train import train
    from tests.tamper import reseal

    root, deadline = Path(root), time.monotonic() + BUDGET_S
    run_dir, bundle = root / RUN, root / "bundle"
    tiny = dict(steps=1, batch_size=4, seq_len=32, progress=False)

    def report(**fields):
        print(json.dumps(fields), flush=True)

    def fresh_bundle():
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(pristine_bundle, bundle, ignore=shutil.ignore_patterns(".edgetune-verified.json"))

    def guarded(case, actions):
        before = _snapshot(root, {RUN})
        for name, action in actions:
            if name != "resume":
                shutil.rmtree(run_dir, ignore_errors=True)
            report(case=case, op=name, result=_attempt(action))
        after = _snapshot(root, {RUN})
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        report(case=case, op="outside", result="ok" if not changed else f"BUG: changed {changed}")

    fresh_bundle()
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    for name in names:
        for label, how in _mutations((bundle / name).stat().st_size):
            for sealed in (False, True):
                if time.monotonic() > deadline:
                    report(case="budget", op="stop", result="ok")
                    return
                fresh_bundle()
                _damage(bundle / name, how)
                if sealed and name != "manifest.json":
                    reseal(bundle)
                case = f"bundle {name} {label}{' resealed' if sealed else ''}"
                guarded(
                    case,
                    [
                        ("generate", lambda: Generator(bundle).generate_ids([5, 6, 7], 2)),
                        ("train", lambda: train(TrainConfig(bundle, Path(data), run_dir, **tiny))),
                    ],
                )
    fresh_bundle()  # checkpoints: a real run, then each of its files damaged in turn
    good_run = root / "good_run"
    train(TrainConfig(bundle, Path(data), good_run, steps=2, save_every=1, batch_size=4, seq_len=32, progress=False))
    step_dir = sorted((good_run / "checkpoints").iterdir())[-1]
    for name in sorted(p.name for p in step_dir.iterdir()):
        for label, how in _mutations((step_dir / name).stat().st_size):
            if time.monotonic() > deadline:
                report(case="budget", op="stop", result="ok")
                return
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(good_run, run_dir)
            _damage(run_dir / "checkpoints" / step_dir.name / name, how)
            config = TrainConfig(bundle, Path(data), run_dir, **{**tiny, "steps": 3}, resume=True)
            guarded(f"checkpoint {name} {label}", [("resume", lambda c=config: train(c))])
    report(case="done", op="done", result="ok")


@pytest.mark.slow
def test_damaged_bundle_and_checkpoint_files_never_crash(tiny_bundle, tmp_path):
    from tests.tiny_models import sample_text

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_text(16, seed=4)))
    code = "import sys; from tests.test_fuzz import run_cases; run_cases(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_bundle("llama", targets="q_proj")), str(tmp_path), str(data)],
        capture_output=True,
        text=True,
        timeout=BUDGET_S + 300,
        cwd=Path(__file__).parents[1],
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"the child died after {rows[-1:]}: {proc.stderr[-3000:]}"
    bugs = [r for r in rows if r["result"].startswith("BUG")]
    assert not bugs, "\n".join(f"{b['case']} / {b['op']}: {b['result']}" for b in bugs[:5])
    cases = {r["case"] for r in rows if r["op"] != "outside"}
    assert any(c.startswith("checkpoint") for c in cases) or rows[-1]["case"] == "budget", "no checkpoint case ran"
    refused = [r for r in rows if r["result"].startswith("refused")]
    assert len(cases) > 40 and refused, (len(cases), len(refused))
