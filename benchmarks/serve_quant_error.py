"""Quantized serving graphs against the fp32 with-past graph on the tiny models: docs/design.md's table.

    PYTHONPATH=src:. python benchmarks/serve_quant_error.py OUT_DIR llama qwen2 ...
Per family: a tiny random model (tests/tiny_models.py, seed 0) built with all-linear LoRA
and --serve-quant int4, then int8; a random adapter (seed 5, scale 0.3) loaded in the
engine; the largest |Δ| of the next-token logits over three prompts against the bundle's
inference graph (fp32) with the same adapter, as test_quantized_serving_stays_within_measured_bounds
checks. Prints one markdown row per family.
"""

import sys
from pathlib import Path

import numpy as np

from edgetune.builder.pipeline import build_bundle
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling, save_adapter
from edgetune.options import BuildConfig
from edgetune.runtime.engine import Engine
from tests.parity import inference_logits, random_adapter
from tests.tiny_models import make_model_dir

PROMPTS = [[5, 17, 42, 8, 99, 23], [7, 7, 31], [60, 12, 250, 3, 44, 90, 101, 5, 6]]


def largest_error(model_dir: Path, out: Path, quant: str) -> float:
    """Build `model_dir` with --serve-quant `quant` into `out`; the largest next-token logit error."""
    bundle = out / f"bundle_{quant}"
    build_bundle(BuildConfig(str(model_dir), bundle, targets="all-linear", serve_quant=quant))
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=5, scale=0.3)
    save_adapter(out / f"adapter_{quant}", weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    engine = Engine(bundle)
    engine.load_adapter("a", out / f"adapter_{quant}")
    scaling = config_scaling(manifest["adapter_config"])
    errors = []
    for prompt in PROMPTS:
        reference = inference_logits(bundle, np.array([prompt]), weights, scaling)[0, -1]
        errors.append(float(np.abs(engine.next_token_logits(prompt, "a") - reference).max()))
    return max(errors)


def main() -> None:
    out = Path(sys.argv[1])
    print("| family | int4 | int8 |\n|---|---|---|")
    for arch in sys.argv[2:]:
        folder = out / arch
        model_dir = make_model_dir(arch, folder / "hf")
        int4, int8 = (largest_error(model_dir, folder, quant) for quant in ("int4", "int8"))
        print(f"| {arch} | {int4:.3f} | {int8:.3f} |", flush=True)


if __name__ == "__main__":
    main()
