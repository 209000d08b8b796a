"""Run-folder checkpoints: ORT's training state plus the JSON needed to resume.

    run/checkpoints/step-000120/checkpoint   ORT CheckpointState: adapter + AdamW moments + step
    run/checkpoints/step-000120/state.json   step, data position, seed, bundle identity, hparams

Base weights are graph initializers, not part of the state, so a checkpoint costs
O(adapter + optimizer state). A save writes a hidden temp folder (every file fsynced),
renames it into place, fsyncs the parent, and only then deletes older checkpoints: a crash
or a full disk at any moment leaves the previous checkpoint whole. The newest `step-*`
folder is the one to resume from; leftover temp folders are ignored and cleaned.
"""

import json
import re
import shutil
import time
from pathlib import Path

from edgetune.common.atomic import atomic_folder, write_json_atomic
from edgetune.common.errors import CheckpointError, OutputError
from edgetune.common.hashing import sha256_file
from edgetune.common.names import CHECKPOINT, CHECKPOINTS, MANIFEST, STATE
from edgetune.runtime.ort_training import CheckpointState

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FIELDS = {  # what resuming reads from state.json, and its type
    "step": int,
    "bundle.path": str,
    "bundle.manifest_sha256": str,
    "data.path": str,
    "data.sha256": str,
    "hparams": dict,
}


def bundle_identity(bundle: Path, manifest: dict) -> dict:
    """What ties a checkpoint to its bundle: the manifest's sha256 (it lists every file's hash)."""
    return {
        "path": str(bundle),
        "manifest_sha256": sha256_file(Path(bundle) / MANIFEST),
        "weights_sha256": manifest["source"]["weights_sha256"],
    }


def save(run_dir: Path, state: CheckpointState, resume_state: dict) -> tuple[Path, int]:
    """Write checkpoint `step-<resume_state['step']>` atomically; return (folder, size in bytes)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    step = resume_state["step"]
    final = root / f"step-{step:06d}"
    try:
        with atomic_folder(final, "saving") as tmp:
            CheckpointState.save_checkpoint(state, tmp / CHECKPOINT, include_optimizer_state=True)
            write_json_atomic(tmp / STATE, {**resume_state, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except (OSError, RuntimeError, OutputError) as e:
        previous = latest(run_dir)
        kept = f"the checkpoint of step {read_state(previous)['step']} is kept" if previous else "no earlier checkpoint"
        raise CheckpointError(f"{root}: cannot save the checkpoint of step {step} ({_reason(e)}); {kept}") from None
    for old in root.glob("step-*"):
        if old != final and _STEP_DIR.match(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return final, size(final)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / CHECKPOINTS
    found = [
        (int(m.group(1)), p)
        for p in root.glob("step-*")
        if (m := _STEP_DIR.match(p.name)) and (p / CHECKPOINT).is_file() and (p / STATE).is_file()
    ]
    return max(found)[1] if found else None


def size(folder: Path) -> int:
    """Bytes of one checkpoint folder."""
    return sum(p.stat().st_size for p in Path(folder).iterdir())


def check_resumable(folder: Path, state: dict, identity: dict, hparams: dict, fixed: tuple[str, ...]) -> None:
    """Refuse a checkpoint from another bundle or data file, or whose `fixed` hparams differ."""
    theirs, ours = state["bundle"], identity["bundle"]
    if theirs["manifest_sha256"] != ours["manifest_sha256"]:
        raise CheckpointError(
            f"{folder}: made with another bundle ({theirs['path']}), not {ours['path']}; refusing to resume"
        )
    if state["data"]["sha256"] != identity["data"]["sha256"]:
        raise CheckpointError(
            f"{identity['data']['path']}: not the data this run was trained on "
            f"({state['data']['path']}); refusing to resume"
        )
    for key in fixed:
        if state["hparams"].get(key) != hparams[key]:
            raise CheckpointError(
                f"{folder}: {key} was {state['hparams'].get(key)}, not {hparams[key]} "
                "(it fixes the data order); refusing to resume"
            )


def read_state(folder: Path) -> dict:
    """The resume state stored next to a checkpoint, with every field resuming reads checked."""
    path = Path(folder) / STATE
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    for field, kind in STATE_FIELDS.items():
        value = state
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise CheckpointError(f"{path}: field {field} is missing or not a {kind.__name__}")
    return state


def remove_partial(run_dir: Path) -> None:
    """Delete temp folders left by a save that crashed."""
    for tmp in (Path(run_dir) / CHECKPOINTS).glob(".step-*.saving-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _reason(error: Exception) -> str:
    """One line from an OSError or from ORT's multi-line RuntimeError ('... error:File too large errno:27')."""
    if isinstance(error, (OSError, OutputError)):
        return error.strerror or str(error)
    found = re.search(r"error:(.+?) errno:\d+", str(error))
    return found.group(1) if found else str(error).strip().splitlines()[-1]
