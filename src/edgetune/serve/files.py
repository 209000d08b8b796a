"""OpenAI's files endpoints: upload (multipart), list, get, content, delete.

A `fine-tune` upload is checked line by line as training data (chat `messages`,
`prompt`/`completion` or `text`) before it is kept, and the first bad line is named in the
400. The bytes are written atomically into STATE_DIR/files/ before the row is inserted, so
a failed write (a full disk) leaves neither a file nor a record.
"""

import errno
import tempfile
import time
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from edgetune.common.atomic import write_atomic
from edgetune.common.errors import DataError
from edgetune.runtime.data import read_examples
from edgetune.serve.errors import ApiError, bad_request, conflict, not_found
from edgetune.serve.state import ServerState

PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data", "evals")
UNFINISHED = ("validating_files", "queued", "running")


def file_object(row: dict) -> dict:
    """OpenAI's file object."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


async def upload(request: Request) -> JSONResponse:
    """POST /v1/files: `file` and `purpose` as multipart form fields."""
    state: ServerState = request.app.state.server
    store = state.fine_tuning.store
    try:
        form = await request.form(max_files=1, max_fields=8)  # spooled to a temporary file past 1 MB
    except ApiError:
        raise
    except OSError as e:
        raise _storage_error(e) from None
    except Exception as e:  # python-multipart's and starlette's parse errors
        raise bad_request(f"the body is not a multipart form ({e})", "file") from None
    purpose, upload_file = form.get("purpose"), form.get("file")
    if purpose not in PURPOSES:
        raise bad_request(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", "purpose")
    if upload_file is None or isinstance(upload_file, str):
        raise bad_request("file must be a file field of the form", "file")
    content = await upload_file.read()
    name = Path(upload_file.filename or "upload.jsonl").name
    examples = _check_training_data(content, name) if purpose == "fine-tune" else 0
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    try:
        write_atomic(store.file_path(file_id), content)
    except OSError as e:
        raise _storage_error(e) from None
    row = {
        "id": file_id,
        "filename": name,
        "bytes": len(content),
        "created_at": int(time.time()),
        "purpose": purpose,
        "examples": examples,
    }
    store.insert("files", row)
    return JSONResponse(file_object(row))


def _storage_error(e: OSError) -> Exception:
    """507 when the disk (or a file size limit) is full; any other OSError stays a bug."""
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return ApiError(
            507, f"no room to store the file ({e.strerror})", "file", "insufficient_storage", "server_error"
        )
    return e


def _check_training_data(content: bytes, name: str) -> int:
    """The number of examples in a JSONL training file; 400 naming the first bad line and field."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(content)
        try:
            examples, _ = read_examples(path)
        except DataError as e:
            raise bad_request(str(e).replace(str(path), name), "file", "invalid_training_file") from None
    return len(examples)


async def list_files(request: Request) -> JSONResponse:
    """GET /v1/files[?purpose=...]."""
    store = request.app.state.server.fine_tuning.store
    purpose = request.query_params.get("purpose")
    rows = store.select("files", "purpose = ?", (purpose,)) if purpose else store.select("files")
    return JSONResponse({"object": "list", "data": [file_object(r) for r in rows], "has_more": False})


def _file(request: Request) -> dict:
    row = request.app.state.server.fine_tuning.store.get("files", request.path_params["file_id"])
    if row is None:
        raise not_found(f"no file with id {request.path_params['file_id']!r}", "file_id", "file_not_found")
    return row


async def get_file(request: Request) -> JSONResponse:
    """GET /v1/files/ID."""
    return JSONResponse(file_object(_file(request)))


async def file_content(request: Request) -> FileResponse:
    """GET /v1/files/ID/content: the bytes as uploaded."""
    row = _file(request)
    path = request.app.state.server.fine_tuning.store.file_path(row["id"])
    return FileResponse(path, media_type="application/jsonl", filename=row["filename"])


async def delete_file(request: Request) -> JSONResponse:
    """DELETE /v1/files/ID (refused while an unfinished job trains on it)."""
    store = request.app.state.server.fine_tuning.store
    row = _file(request)
    marks = ", ".join("?" for _ in UNFINISHED)
    users = store.select(
        "jobs",
        f"(training_file = ? OR validation_file = ?) AND status IN ({marks})",
        (row["id"], row["id"], *UNFINISHED),
    )
    if users:
        raise conflict(
            f"file {row['id']} is used by job {users[0]['id']}, which has not finished", "file_id", "file_in_use"
        )
    store.delete("files", row["id"])
    store.file_path(row["id"]).unlink(missing_ok=True)
    return JSONResponse({"id": row["id"], "object": "file", "deleted": True})


ROUTES = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
