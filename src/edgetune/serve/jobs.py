"""OpenAI's fine_tuning.jobs endpoints: create, list, get, events, checkpoints, cancel."""

import math
import re
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgetune.runtime import checkpoints
from edgetune.serve.errors import bad_request, not_found
from edgetune.serve.fine_tuning import AUTO, FINISHED
from edgetune.serve.state import ServerState, read_json

SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,40}")
RANGES = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (0, 10)}
MIN_AUTO_STEPS, MAX_AUTO_EPOCHS = 125, 10


def job_object(row: dict) -> dict:
    """OpenAI's fine_tuning.job object."""
    hp = row["hyperparameters"]
    return {
        "object": "fine_tuning.job",
        "id": row["id"],
        "model": row["model"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "local",
        "result_files": [],
        "status": row["status"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "hyperparameters": hp,
        "trained_tokens": row["trained_tokens"],
        "error": row["error"],
        "seed": row["seed"],
        "estimated_finish": None,
        "integrations": [],
        "user_provided_suffix": row["suffix"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    }


async def create(request: Request) -> JSONResponse:
    """POST /v1/fine_tuning/jobs."""
    state: ServerState = request.app.state.server
    ft, store = state.fine_tuning, state.fine_tuning.store
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    if body.get("model") != state.registry.base_name:
        raise not_found(
            f"fine-tuning starts from this server's base model {state.registry.base_name!r}, not {body.get('model')!r}",
            "model",
            "model_not_found",
        )
    training = _training_file(store, body.get("training_file"), "training_file")
    validation = None
    if body.get("validation_file") is not None:
        validation = _training_file(store, body["validation_file"], "validation_file")["id"]
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.fullmatch(suffix)):
        raise bad_request("suffix must be 1-40 letters, digits or . _ -", "suffix")
    seed = body.get("seed", 0)
    if seed is None:
        seed = 0
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise bad_request(f"seed must be a whole number in [0, 2^31), got {seed!r}", "seed")
    hp, where = _hyperparameters(body)
    hp = _resolve(hp, where, training["examples"])
    row = {
        "id": f"ftjob-{uuid.uuid4().hex[:24]}",
        "created_at": int(time.time()),
        "status": "queued",
        "model": state.registry.base_name,
        "base_sha256": ft.base_sha,
        "training_file": training["id"],
        "validation_file": validation,
        "hyperparameters": hp,
        "suffix": suffix,
        "seed": seed,
    }
    store.insert("jobs", row)
    store.add_event(row["id"], f"Created fine-tuning job {row['id']}")
    ft.wake()
    return JSONResponse(job_object(store.get("jobs", row["id"])))


def _training_file(store, file_id, field: str) -> dict:
    if not isinstance(file_id, str) or not file_id:
        raise bad_request(f"{field} must be the id of an uploaded file", field)
    row = store.get("files", file_id)
    if row is None:
        raise bad_request(f"{field}: no file with id {file_id!r}", field, "file_not_found")
    if row["purpose"] != "fine-tune":
        raise bad_request(
            f"{field}: file {file_id} was uploaded with purpose {row['purpose']!r}, not 'fine-tune'",
            field,
            "invalid_file_purpose",
        )
    return row


def _hyperparameters(body: dict) -> tuple[dict, str]:
    """The hyperparameters object, from `hyperparameters` or `method.supervised.hyperparameters`."""
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise bad_request("method.type must be 'supervised' (the only method this server runs)", "method.type")
        hp = (method.get("supervised") or {}).get("hyperparameters") or {}
        where = "method.supervised.hyperparameters"
    else:
        hp, where = body.get("hyperparameters") or {}, "hyperparameters"
    if not isinstance(hp, dict):
        raise bad_request(f"{where} must be an object", where)
    unknown = sorted(set(hp) - set(RANGES))
    if unknown:
        raise bad_request(f"{where}.{unknown[0]} is not supported", f"{where}.{unknown[0]}")
    return hp, where


def _resolve(hp: dict, where: str, examples: int) -> dict:
    """Each hyperparameter checked against its range, "auto" replaced by the value used."""
    out = {}
    for name, (low, high) in RANGES.items():
        value = hp.get(name, "auto")
        if value == "auto":
            out[name] = AUTO[name]
            continue
        whole = name != "learning_rate_multiplier"
        ok = isinstance(value, int) if whole else isinstance(value, (int, float)) and math.isfinite(value)
        if isinstance(value, bool) or not ok or not (low <= value <= high) or (not whole and value <= 0):
            kind = "a whole number" if whole else "a number"
            bounds = f"in [{low}, {high}]" if whole else f"in ({low}, {high}]"
            raise bad_request(f"{where}.{name} must be {kind} {bounds} or 'auto', got {value!r}", f"{where}.{name}")
        out[name] = value
    if out["n_epochs"] is None:
        per_epoch = math.ceil(examples / out["batch_size"])
        out["n_epochs"] = max(1, min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_STEPS / per_epoch)))
    return out


def _job(request: Request) -> dict:
    row = request.app.state.server.fine_tuning.store.get("jobs", request.path_params["job_id"])
    if row is None:
        raise not_found(
            f"no fine-tuning job with id {request.path_params['job_id']!r}", "fine_tuning_job_id", "job_not_found"
        )
    return row


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "20")
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise bad_request(f"limit must be a whole number in [1, 1000], got {text!r}", "limit")
    return int(text)


async def list_jobs(request: Request) -> JSONResponse:
    """GET /v1/fine_tuning/jobs, newest first."""
    store, limit = request.app.state.server.fine_tuning.store, _limit(request)
    rows = store.select("jobs", limit=limit + 1)
    return JSONResponse(
        {"object": "list", "data": [job_object(r) for r in rows[:limit]], "has_more": len(rows) > limit}
    )


async def get_job(request: Request) -> JSONResponse:
    """GET /v1/fine_tuning/jobs/ID."""
    return JSONResponse(job_object(_job(request)))


async def events(request: Request) -> JSONResponse:
    """GET /v1/fine_tuning/jobs/ID/events, newest first; `after` pages to older ones."""
    store, job, limit = request.app.state.server.fine_tuning.store, _job(request), _limit(request)
    rows = store.events(job["id"], request.query_params.get("after"), limit + 1)
    data = [
        {
            "object": "fine_tuning.job.event",
            "id": r["id"],
            "created_at": r["created_at"],
            "level": r["level"],
            "message": r["message"],
            "data": r["data"] or {},
            "type": r["type"],
        }
        for r in rows[:limit]
    ]
    return JSONResponse({"object": "list", "data": data, "has_more": len(rows) > limit})


async def job_checkpoints(request: Request) -> JSONResponse:
    """GET /v1/fine_tuning/jobs/ID/checkpoints: the run's checkpoints, newest first."""
    ft, job, limit = request.app.state.server.fine_tuning, _job(request), _limit(request)
    root = ft.store.run_dir(job["id"]) / "checkpoints"
    found = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    data = []
    for folder in found[:limit]:
        state = checkpoints.read_state(folder)
        name = f"{job['fine_tuned_model'] or job['id']}:ckpt-step-{state['step']}"
        data.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt-{job['id'][6:]}-{state['step']}",
                "created_at": int(folder.stat().st_mtime),
                "fine_tuned_model_checkpoint": name,
                "step_number": state["step"],
                "fine_tuning_job_id": job["id"],
                "metrics": {"step": state["step"], "train_loss": state.get("train_loss")},
            }
        )
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "has_more": len(found) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


async def cancel(request: Request) -> JSONResponse:
    """POST /v1/fine_tuning/jobs/ID/cancel (refused once the job has finished)."""
    ft, job = request.app.state.server.fine_tuning, _job(request)
    if job["status"] in FINISHED:
        raise bad_request(
            f"job {job['id']} has already finished (status {job['status']}): nothing to cancel",
            "fine_tuning_job_id",
            "job_not_cancellable",
        )
    ft.cancel(job["id"])
    return JSONResponse(job_object(ft.store.get("jobs", job["id"])))


ROUTES = [
    Route("/v1/fine_tuning/jobs", create, methods=["POST"]),
    Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/events", events, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", job_checkpoints, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel, methods=["POST"]),
]
