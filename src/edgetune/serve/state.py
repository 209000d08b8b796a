"""What every route shares: the engine's tokenizer files, the registry, the scheduler, the limits."""

import json
from dataclasses import dataclass, field

from starlette.requests import Request

from edgetune.runtime.model_files import ModelFiles
from edgetune.serve.adapters import AdapterRegistry
from edgetune.serve.errors import bad_request
from edgetune.serve.metrics import ServerMetrics
from edgetune.serve.scheduler import Scheduler


@dataclass
class ServerState:
    """The running server's parts (one per process; routes find it as `request.app.state.server`)."""

    files: ModelFiles  # tokenizer and chat template (read-only, safe from any thread)
    capacity: int  # tokens per request: prompt plus completion
    registry: AdapterRegistry
    scheduler: Scheduler
    metrics: ServerMetrics
    api_key: str | None
    max_tokens_limit: int
    max_body_bytes: int
    max_upload_bytes: int
    started: int  # unix time
    fine_tuning: object | None = None  # serve.fine_tuning.FineTuning when --state-dir is set
    extra: dict = field(default_factory=dict)


async def read_json(request: Request):
    """The request's JSON body (its size was bounded by the app's middleware); 400 if it is not JSON."""
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})") from None
