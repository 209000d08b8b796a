"""Build figures: `edgetune build` time, peak RSS and bundle size; random models for the scaling runs.

SmolLM2 is built with the CLI under `/usr/bin/time -v` (the command a user types).
The larger models are random-initialised from their published configs (written out
below, nothing is downloaded), saved as HF folders with SmolLM2's tokenizer, and built
with `build_bundle` in a child process (peak RSS from wait4; the memory guard of
`children.run_child` stops a build that would exhaust the shared machine).
"""

import json
import re
import shutil
import sys
import time
from pathlib import Path

import children
import workloads

CONFIGS = {  # published configs of the original models, as config.json fields
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    "tinyllama-1.1b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_smollm2_cli(out: Path) -> dict:
    """`/usr/bin/time -v edgetune build <gguf> -o out --force`: wall time, peak RSS, sizes."""
    cli = Path(children.PYTHON).parent / "edgetune"
    run = children.run_child(
        ["/usr/bin/time", "-v", cli, "build", workloads.smollm2_gguf(), "-o", out, "--force"], timeout=1200
    )
    if run["rc"] != 0:
        return {"error": run["error"]}
    return {
        "command": f"/usr/bin/time -v .venv/bin/edgetune build {workloads.smollm2_gguf()} -o {out} --force",
        "wall_s": run["wall_s"],
        "peak_rss_bytes": run["peak_rss_bytes"],
        **bundle_sizes(out),
    }


def bundle_sizes(bundle: Path) -> dict:
    """Bundle bytes on disk vs the model's fp32 weights (parameters x 4, tied weights once)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {
        "bundle_bytes": workloads.dir_bytes(bundle),
        "fp32_weights_bytes": 4 * count_params(bundle),
        "checkpoint_bytes": (bundle / "checkpoint").stat().st_size,
        "files": len(manifest["files"]),
    }


def count_params(folder: Path) -> int:
    """Parameters from config.json (a Llama/Qwen2 decoder; tied embeddings counted once)."""
    c = workloads.read_config(folder)
    d, heads = c["hidden_size"], c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or d // heads
    bias = (heads + 2 * kv) * hd if c["model_type"] == "qwen2" else 0  # q/k/v biases
    layer = 2 * d * heads * hd + 2 * d * kv * hd + bias + 3 * d * c["intermediate_size"] + 2 * d
    embed = c["vocab_size"] * d * (1 if c.get("tie_word_embeddings") else 2)
    return c["num_hidden_layers"] * layer + embed + d


def make_random_model(name: str) -> Path:
    """Child: a random model from CONFIGS[name] saved as a HF folder (once) with SmolLM2's tokenizer."""
    folder = children.BENCH / "models" / name
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    fields = dict(CONFIGS[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = folder.with_name(name + ".tmp")
    model.save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        shutil.copy(workloads.SMOLLM2_HF / f, tmp / f)
    tmp.rename(folder)
    return folder


def _child_model(o: dict) -> dict:
    started = time.perf_counter()
    return {"folder": str(make_random_model(o["name"])), "seconds": time.perf_counter() - started}


def _child_build(o: dict) -> dict:
    from edgetune.builder.pipeline import build_bundle
    from edgetune.options import BuildConfig

    started = time.perf_counter()
    build_bundle(BuildConfig(o["model"], Path(o["out"]), targets="q_proj,v_proj", force=True))
    return {"seconds": time.perf_counter() - started}


def build_random(name: str, rebuild: bool = False) -> dict:
    """Random model folder + bundle for `name`; returns paths, build time and peak RSS, or the error."""
    made = children.run_child(children.child_cmd("build_figures.py", {"impl": "model", "name": name}), timeout=1200)
    if made["error"]:
        return {"error": f"random model: {made['error']}"}
    folder = Path(made["result"]["folder"])
    out = children.BENCH / "bundles" / name
    record = out.with_name(name + ".build.json")  # the last build's figures (a build takes minutes)
    if record.is_file() and (out / "manifest.json").is_file() and not rebuild:  # a failure is tried again
        return {**json.loads(record.read_text()), "from_earlier_run": True}
    children.log(f"  building {name} (free memory {children.mem_available() / 2**30:.1f} GiB)")
    run = children.run_child(
        children.child_cmd("build_figures.py", {"impl": "build", "model": str(folder), "out": str(out)}), timeout=1800
    )
    result = {
        "model": str(folder),
        "build_wall_s": run["wall_s"],
        "build_peak_rss_bytes": run["peak_rss_bytes"],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result.update({"error": _short(run["error"])} if run["error"] else {"bundle": str(out), **bundle_sizes(out)})
    record.write_text(json.dumps(result, indent=1))
    return result


def _short(error: str) -> str:
    return re.sub(r"\s+", " ", error)[-500:]


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"model": _child_model, "build": _child_build})
