"""The model names a server answers to: its base model and the adapters trained on it.

The registry maps each adapter name to its folder. Folders named by requests
(`POST /v1/adapters`) must lie inside `--adapters-dir`, symlinks resolved, and so must the
two files read from them; folders given on the command line are the operator's choice.
Which adapters sit in the engine's slots is the scheduler's business: a known adapter is
loaded when a request names it, and the least recently used idle one makes room.
"""

import re
import threading
from collections import OrderedDict
from pathlib import Path

from edgetune.common.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from edgetune.serve.errors import ApiError, bad_request, not_found

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,95}")
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30


class AdapterRegistry:
    """Adapter name -> folder, plus the base model's name; safe to use from any thread."""

    def __init__(self, base_name: str, adapters_dir: Path | None):
        self.base_name = base_name
        self.adapters_dir = Path(adapters_dir).resolve() if adapters_dir else None
        self._folders: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, model: str) -> str | None:
        """The adapter a `model` field names (None: the base model); 404 for an unknown name."""
        if model == self.base_name:
            return None
        with self._lock:
            if model in self._folders:
                return model
        raise not_found(
            f"the model {model!r} does not exist on this server (see GET /v1/models)", "model", "model_not_found"
        )

    def folder(self, name: str) -> Path:
        """The folder of a known adapter."""
        with self._lock:
            return self._folders[name]

    def names(self) -> list[str]:
        """Every known adapter, in the order they were added."""
        with self._lock:
            return list(self._folders)

    def check_new_name(self, name) -> str:
        """A name a new adapter may take: well formed, not the base model's, not taken."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise bad_request("name must be 1-96 letters, digits or . _ : - (starting with a letter or digit)", "name")
        with self._lock:
            if name == self.base_name or name in self._folders:
                raise ApiError(409, f"the name {name!r} is taken", "name", "name_taken")
        return name

    def confine(self, path) -> Path:
        """The adapter folder a request names, relative to --adapters-dir; refused if it leads outside it."""
        if self.adapters_dir is None:
            raise ApiError(
                403,
                "this server was started without --adapters-dir: it loads no adapter on request",
                "path",
                "adapters_dir_unset",
            )
        if not isinstance(path, str) or not path or "\0" in path:
            raise bad_request("path must name an adapter folder inside the adapters folder", "path")
        folder = (self.adapters_dir / path).resolve()
        if not folder.is_relative_to(self.adapters_dir) or folder == self.adapters_dir:
            raise bad_request(f"path {path!r} is outside the adapters folder", "path", "outside_adapters_dir")
        if not folder.is_dir():
            raise bad_request(f"path {path!r}: no such adapter folder", "path", "adapter_not_found")
        for name, limit in ((ADAPTER_CONFIG, MAX_CONFIG_BYTES), (ADAPTER_WEIGHTS, MAX_WEIGHTS_BYTES)):
            file = (folder / name).resolve()
            if not file.is_relative_to(self.adapters_dir):
                raise bad_request(
                    f"path {path!r}: {name} links outside the adapters folder", "path", "outside_adapters_dir"
                )
            if not file.is_file():
                raise bad_request(f"path {path!r}: no {name} (not a PEFT adapter folder)", "path", "invalid_adapter")
            if file.stat().st_size > limit:
                raise bad_request(f"path {path!r}: {name} is larger than {limit} bytes", "path", "invalid_adapter")
        return folder

    def add(self, name: str, folder: Path) -> None:
        """Make `name` servable from `folder` (already checked)."""
        with self._lock:
            self._folders[name] = Path(folder)

    def remove(self, name: str) -> None:
        """Forget `name`; 404 if it is not known."""
        with self._lock:
            if self._folders.pop(name, None) is None:
                raise not_found(f"no adapter named {name!r}", "name", "adapter_not_found")

    def models(self, created: int) -> list[dict]:
        """The /v1/models list: the base model, then each adapter with the base as its parent."""
        base = {"id": self.base_name, "object": "model", "created": created, "owned_by": "edgetune", "parent": None}
        adapters = [{**base, "id": name, "parent": self.base_name} for name in self.names()]
        return [base, *adapters]
