"""Build a fixed matrix of tiny bundles and record every file's sha256, to prove a refactor changes no byte.

    .venv/bin/python scripts/bundle_hashes.py OUT_DIR hashes.json            # build and record
    .venv/bin/python scripts/bundle_hashes.py OUT_DIR new.json --compare old.json

The tiny models are made once under OUT_DIR/models with fixed seeds, so two checkouts
building into the same OUT_DIR see the same inputs. Bundles from the same inputs must be
byte-identical (manifests included).
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package: tiny models

from edgetune.builder.pipeline import build_bundle
from edgetune.options import BuildConfig
from tests.tiny_models import make_model_dir

MATRIX = {
    **{f"{arch}-lora": (arch, {"targets": "all-linear"}) for arch in ("llama", "qwen2", "mistral", "phi3", "gpt2")},
    "llama-default": ("llama", {}),
    "llama-dora": ("llama", {"targets": "all-linear", "method": "dora"}),
    "phi3-dora": ("phi3", {"targets": "all-linear", "method": "dora"}),
    "llama-qlora8": ("llama", {"targets": "all-linear", "method": "qlora", "quant": "int8"}),
    "llama-qlora4": ("llama", {"targets": "all-linear", "method": "qlora", "quant": "int4"}),
    "gpt2-qlora4": ("gpt2", {"targets": "all-linear", "method": "qlora", "quant": "int4", "block_size": 64}),
    "qwen2-qlora8-nock": ("qwen2", {"method": "qlora", "quant": "int8", "gradient_checkpointing": False}),
    "llama-ck": ("llama", {"targets": "all-linear", "gradient_checkpointing": True}),
    "mistral-dropout": (
        "mistral",
        {
            "targets": "q_proj,v_proj",
            "rank": 4,
            "alpha": 8.0,
            "dropout": 0.1,
            "use_rslora": True,
            "optimizer": "sgd",
            "seed": 3,
        },
    ),
}


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def main() -> int:
    """Build the matrix, write the hashes, and compare them with an earlier run if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("hashes", type=Path)
    parser.add_argument("--compare", type=Path, default=None)
    args = parser.parse_args()
    result = {}
    for name, (arch, options) in MATRIX.items():
        model = args.out_dir / "models" / arch
        if not (model / "config.json").is_file():
            make_model_dir(arch, model)
        bundle = args.out_dir / "bundles" / name
        build_bundle(BuildConfig(str(model), bundle, force=True, **options))
        result[name] = file_hashes(bundle)
    args.hashes.write_text(json.dumps(result, indent=1))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    differing = [name for name in result if result[name] != before.get(name)]
    for name in result:
        print(f"{name}: {'differs' if name in differing else 'identical'}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
