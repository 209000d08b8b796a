"""Full-size models with random weights in the hub's layout: build, train and serve figures.

    python benchmarks/full_size.py phi-3-mini-4k [--methods qlora-int4 lora] [--steps 2] [--no-torch] [--bf16] [--reuse]

The folder is `hub_models.py`'s (made here if absent: published config, sharded bf16
safetensors, a tokenizer of the published size). Per method, each step a child process
with its own peak RSS (`children.py`):
    build    build_bundle(model folder, --method/--quant), as `edgetune build` runs it
    train    batch 1 x seq-len 512: train_speed's tight loops, edgetune on the bundle beside
             PyTorch + PEFT fp32 on the folder (same r, alpha and targets; PyTorch once, as it
             does not depend on the bundle's method; `--bf16`: also with bf16 autocast), 1 warm-up +
             `steps` timed steps
    serve    (int4) the serving engine: decode tokens/s at batch 1 after a 128-token prompt,
             time to first token for a 512-token prompt
Results go to artifacts/bench/full-size-<model>.json, a run replacing its methods' entries.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import children
import train_speed
import workloads

METHODS = {"qlora-int4": ("qlora", "int4"), "qlora-int8": ("qlora", "int8"), "lora": ("lora", None)}


def _child_build(o: dict) -> dict:
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    started = time.perf_counter()
    build_bundle(BuildConfig(o["model"], Path(o["out"]), method=o["method"], quant=o["quant"], force=True))
    return {"seconds": time.perf_counter() - started}


def _child_model(o: dict) -> dict:
    import hub_models

    hub_models.make_folder(o["name"], Path(o["folder"]))
    return {}


def default_targets(folder: Path) -> list[str]:
    """The architecture's default LoRA targets, as `edgetune build` picks them (for the PyTorch side)."""
    from edgetune.builder.registry import get_architecture

    config = json.loads((folder / "config.json").read_text())
    return list(get_architecture(config["model_type"]).default_targets)


def build(folder: Path, name: str, method: str) -> dict:
    """Build the bundle in a child; its wall time, peak RSS and size on disk (or the error)."""
    out = children.BENCH / "bundles" / f"{name}-{method}"
    kind, quant = METHODS[method]
    children.log(f"build {out.name} (free memory {children.mem_available() / 2**30:.1f} GiB)")
    cmd = children.child_cmd(
        "full_size.py", {"impl": "build", "model": str(folder), "out": str(out), "method": kind, "quant": quant}
    )
    run = children.run_child(cmd, timeout=5400)
    return {
        "bundle": str(out),
        "wall_s": run["wall_s"],
        "peak_rss_bytes": run["peak_rss_bytes"],
        "bundle_bytes": workloads.dir_bytes(out) if out.is_dir() else 0,
        "loadavg": run["loadavg"],
        "error": run["error"],
    }


def serve(bundle: Path, folder: Path) -> dict:
    """The engine on the bundle's serving graph: batch-1 decode tokens/s and TTFT at 128 and 512 tokens."""
    options = {
        "impl": "edgetune",
        "bundle": str(bundle),
        "prompt": workloads.text_tokens(512 + 8 * 64, folder / "tokenizer.json"),
        "prompt_tokens": 128,
        "new_tokens": 32,
        "stream_tokens": 8,
        "ttft_prompts": [128, 512],
        "capacity": 1024,
    }
    run = children.run_child(children.child_cmd("decode.py", options), timeout=3600)
    keep = ("load_s", "ttft_s", "decode_tokens_per_s", "ttft_by_prompt", "streams8_tokens_per_s")
    result = {k: v for k, v in (run["result"] or {}).items() if k in keep}
    return {**result, "peak_rss_bytes": run["peak_rss_bytes"], "loadavg": run["loadavg"], "error": run["error"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a name in hub_models.MODELS")
    parser.add_argument("--methods", nargs="+", default=["qlora-int4", "lora"], choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch + PEFT fp32")
    parser.add_argument("--no-serve", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also PyTorch + PEFT with bf16 autocast")
    parser.add_argument("--reuse", action="store_true", help="train and serve bundles built before, without rebuilding")
    args = parser.parse_args()
    folder = children.BENCH / "models" / args.model
    if not (folder / "model.safetensors.index.json").is_file():
        made = children.run_child(
            children.child_cmd("full_size.py", {"impl": "model", "name": args.model, "folder": str(folder)})
        )
        assert not made["error"], made["error"]
    out = children.BENCH / f"full-size-{args.model}.json"  # one file per model, a run updates its methods' rows
    results = json.loads(out.read_text()) if out.is_file() else {"model": args.model, "runs": {}}
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    results["params"] = index["metadata"]["total_size"] // 2  # bf16 shards, tied weights once
    base = {"batch": 1, "seq_len": 512, "steps": args.steps, "warmup": 1}
    for i, method in enumerate(args.methods):
        built = children.BENCH / "bundles" / f"{args.model}-{method}"
        reused = args.reuse and (built / "manifest.json").is_file()
        entry = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg_start": os.getloadavg(),
        }
        before = results["runs"].get(method, {}).get("build", {})  # a reused bundle keeps its build figures
        reuse = {**before, "bundle": str(built), "reused": True, "error": None}
        entry["build"] = reuse if reused else build(folder, args.model, method)
        if entry["build"]["error"] is None:
            points = {"edgetune": {"impl": "edgetune", "bundle": entry["build"]["bundle"], **base}}
            if i == 0 and not args.no_torch:
                targets = default_targets(folder)
                points["torch_fp32"] = {
                    "impl": "torch",
                    "model": str(folder),
                    "lora": {**workloads.LORA, "target_modules": targets},
                    "env": children.NO_SPIN,
                    **base,
                }
                if args.bf16:
                    points["torch_bf16"] = {**points["torch_fp32"], "bf16": True}
            entry["train"] = train_speed.measure(points, rounds=1, timeout=7200)
            if METHODS[method][1] == "int4" and not args.no_serve:
                entry["serve"] = serve(Path(entry["build"]["bundle"]), folder)
        entry["loadavg_end"] = os.getloadavg()
        results["runs"][method] = entry
        out.write_text(json.dumps(results, indent=1, default=str))
    children.log(f"results in {out}")


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"build": _child_build, "model": _child_model})
elif __name__ == "__main__":
    main()
