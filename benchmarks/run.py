"""edgetune benchmarks: `python benchmarks/run.py [--quick] [--json] [--only SECTION ...]`.

Sections (each contender in its own child process, contenders alternated A B A B):
    hardware   fp32 and int8 GEMM peaks (2 threads) and memory bandwidth, measured now
    train      LoRA training tokens/s, step time, peak RSS, MFU (fp32 and int8 compute, beside PyTorch
               fp32 and bf16 autocast, with and without checkpointing); checkpoint size/save time
    decode     TTFT and decode tokens/s, vs the memory-bandwidth bound
    skill      time to 90% held-out exact match on the dates task (full run only)
    build      `edgetune build` time / peak RSS / bundle size for SmolLM2 (full run only)
    scaling    tokens/s and peak RSS vs seq-len and model size, plus a plot (full run only)
Results go to artifacts/bench/results-<quick|full>.json; --json prints them as the last line.
"""

import argparse
import json
import sys
import time

import children
import flops
import hardware
import workloads

QUICK = {"batch": 1, "seq_len": 512, "steps": 2, "warmup": 1, "rounds": 2, "decode_rounds": 2, "spin_reference": False}
FULL = {"batch": 2, "seq_len": 512, "steps": 3, "warmup": 1, "rounds": 2, "decode_rounds": 2, "spin_reference": True}
SECTIONS = ("hardware", "train", "decode", "skill", "build", "scaling")
MAIN_ROWS = ("edgetune", "torch_fp32", "edgetune_int8", "torch_bf16")
CHECKPOINTING_ROWS = (
    "edgetune_checkpointing",
    "torch_fp32_checkpointing",
    "edgetune_int8_checkpointing",
    "torch_bf16_checkpointing",
)
TRAIN_ROWS = MAIN_ROWS + CHECKPOINTING_ROWS + ("edgetune_all_labels", "torch_fp32_spin")
QUICK_SECTIONS = ("hardware", "train", "decode")


def section_hardware(results: dict, s: dict) -> None:
    run = children.run_child(children.child_cmd("hardware.py", {"threads": 2}), timeout=300, env=children.NO_SPIN)
    results["hardware"] = run["result"] or {"error": run["error"]}


def section_train(results: dict, s: dict) -> None:
    import train_speed

    points = train_speed.contenders(
        workloads.SMOLLM2_BUNDLE,
        workloads.SMOLLM2_HF,
        s["batch"],
        s["seq_len"],
        s["steps"],
        s["warmup"],
        extras=True,
        checkpointed_bundle=workloads.ensure_smollm2_bundle(checkpointing=True),
        int8_bundles=(
            workloads.ensure_smollm2_bundle(compute="int8"),
            workloads.ensure_smollm2_bundle(checkpointing=True, compute="int8"),
        ),
    )
    train = {}
    for group in (MAIN_ROWS, CHECKPOINTING_ROWS):  # each group alternated A B C D A B C D
        train.update(train_speed.measure({k: points[k] for k in group}, s["rounds"]))
    references = ("edgetune_all_labels",) + (("torch_fp32_spin",) if s["spin_reference"] else ())
    children.log(f"  references (one run each): {', '.join(references)}")
    train.update(train_speed.measure({k: points[k] for k in references}, 1))
    samples = [f["gemm_flops_max"] for f in train.values() if f.get("gemm_flops_max")]
    peak = max(samples + [(results.get("hardware") or {}).get("gemm_peak_flops") or 0])
    samples = [f["int8_gemm_ops_max"] for f in train.values() if f.get("int8_gemm_ops_max")]
    int8_peak = max(samples + [(results.get("hardware") or {}).get("int8_gemm_peak_ops") or 0])
    for figures in train.values():
        if peak and figures.get("model_flops_per_s"):
            figures["mfu"] = figures["model_flops_per_s"] / peak
        if int8_peak and figures.get("model_flops_per_s"):
            figures["mfu_int8"] = figures["model_flops_per_s"] / int8_peak
    results["train"] = {
        "batch": s["batch"],
        "seq_len": s["seq_len"],
        "steps": s["steps"],
        "gemm_peak_flops": peak,
        "int8_gemm_peak_ops": int8_peak,
        "flops_per_token": flops.train_flops_per_token(workloads.read_config(workloads.SMOLLM2_HF)),
        "labelled_tokens": (train.get("edgetune") or {}).get("labelled_tokens"),
        **train,
    }


def section_decode(results: dict, s: dict) -> None:
    import decode
    from edgetune.common.embedded import smollm2_gguf

    bundles = {q if q != "none" else "fp32": workloads.ensure_smollm2_serving(q) for q in ("int4", "int8", "none")}
    adapters = workloads.random_adapters(bundles["int4"])
    points = decode.contenders(bundles, workloads.SMOLLM2_HF, smollm2_gguf(), adapters, spin=True)
    figures = decode.measure(points, s["decode_rounds"])
    bandwidth = (results.get("hardware") or {}).get("mem_bandwidth_bytes_per_s")
    weight_bytes = 4 * flops.matmul_params(workloads.read_config(workloads.SMOLLM2_HF))
    figures["weight_bytes_per_token"] = weight_bytes
    if bandwidth:
        figures["bound_tokens_per_s"] = bandwidth / weight_bytes
        for name in ("edgetune-fp32", "transformers"):
            if figures.get(name, {}).get("decode_tokens_per_s"):
                figures[name]["fraction_of_bound"] = (
                    figures[name]["decode_tokens_per_s"] / figures["bound_tokens_per_s"]
                )
    results["decode"] = figures


def section_skill(results: dict, s: dict) -> None:
    import time_to_skill

    results["skill"] = time_to_skill.measure(workloads.SMOLLM2_BUNDLE, workloads.SMOLLM2_HF)


def section_build(results: dict, s: dict) -> None:
    import build_figures

    results["build"] = build_figures.build_smollm2_cli(children.BENCH / "b")


def section_scaling(results: dict, s: dict) -> None:
    import scaling

    main = {k: v for k, v in results.get("train", {}).items() if k in ("edgetune", "torch_fp32")}
    results["scaling"] = scaling.measure(main)
    results["scaling"]["plot"] = str(scaling.plot(results["scaling"], children.ROOT / "benchmarks" / "scaling.png"))


def headline(results: dict) -> dict:
    """The ratios the targets are stated in (None where a section did not run or failed)."""

    def get(*keys):
        node = results
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    def ratio(a, b):
        return a / b if a is not None and b else None

    return {
        "train_speed_ratio": ratio(
            get("train", "edgetune", "tokens_per_s"), get("train", "torch_fp32", "tokens_per_s")
        ),
        "train_rss_ratio": ratio(
            get("train", "edgetune", "peak_rss_bytes"), get("train", "torch_fp32", "peak_rss_bytes")
        ),
        "mfu": get("train", "edgetune", "mfu"),
        "train_checkpointing_speed_ratio": ratio(
            get("train", "edgetune_checkpointing", "tokens_per_s"),
            get("train", "torch_fp32_checkpointing", "tokens_per_s"),
        ),
        "train_checkpointing_rss_ratio": ratio(
            get("train", "edgetune_checkpointing", "peak_rss_bytes"),
            get("train", "torch_fp32_checkpointing", "peak_rss_bytes"),
        ),
        "mfu_torch_fp32": get("train", "torch_fp32", "mfu"),
        "int8_vs_bf16_speed_ratio": ratio(
            get("train", "edgetune_int8", "tokens_per_s"), get("train", "torch_bf16", "tokens_per_s")
        ),
        "int8_vs_bf16_rss_ratio": ratio(
            get("train", "edgetune_int8", "peak_rss_bytes"), get("train", "torch_bf16", "peak_rss_bytes")
        ),
        "int8_vs_bf16_checkpointing_speed_ratio": ratio(
            get("train", "edgetune_int8_checkpointing", "tokens_per_s"),
            get("train", "torch_bf16_checkpointing", "tokens_per_s"),
        ),
        "int8_vs_bf16_checkpointing_rss_ratio": ratio(
            get("train", "edgetune_int8_checkpointing", "peak_rss_bytes"),
            get("train", "torch_bf16_checkpointing", "peak_rss_bytes"),
        ),
        "mfu_int8": get("train", "edgetune_int8", "mfu"),
        "mfu_int8_of_int8_peak": get("train", "edgetune_int8", "mfu_int8"),
        "decode_speed_ratio": ratio(
            get("decode", "edgetune-fp32", "decode_tokens_per_s"), get("decode", "transformers", "decode_tokens_per_s")
        ),
        "ttft_ratio": ratio(get("decode", "transformers", "ttft_s"), get("decode", "edgetune-fp32", "ttft_s")),
        "int4_vs_llama_cpp": ratio(
            get("decode", "edgetune-int4", "decode_tokens_per_s"), get("decode", "llama.cpp", "decode_tokens_per_s")
        ),
        "int4_spin_vs_llama_cpp": ratio(
            get("decode", "edgetune-int4-spin", "decode_tokens_per_s"),
            get("decode", "llama.cpp", "decode_tokens_per_s"),
        ),
        "ttft512_llama_cpp_over_int4": ratio(
            get("decode", "llama.cpp", "ttft_by_prompt", "512"), get("decode", "edgetune-int4", "ttft_by_prompt", "512")
        ),
        "streams8_over_one_int4": ratio(
            get("decode", "edgetune-int4", "streams8_tokens_per_s"),
            get("decode", "edgetune-int4", "decode_tokens_per_s"),
        ),
        "mixed_adapters_ratio_int4": get("decode", "edgetune-int4", "mixed_adapters_ratio"),
        "time_to_skill_ratio": ratio(get("skill", "torch", "wall_s"), get("skill", "edgetune", "wall_s"))
        if get("skill", "torch", "reached") and get("skill", "edgetune", "reached")
        else None,
        "checkpoint_save_ratio": ratio(
            get("train", "torch_fp32", "checkpoint_save_s"), get("train", "edgetune", "checkpoint_save_s")
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hardware, train (batch 1), decode: < 10 min")
    parser.add_argument("--json", action="store_true", help="print all results as one JSON object, last line")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    sections = args.only or (QUICK_SECTIONS if args.quick else SECTIONS)
    children.BENCH.mkdir(parents=True, exist_ok=True)
    workloads.ensure_smollm2_bundle()
    workloads.ensure_smollm2_hf()
    started = time.perf_counter()
    results = {
        "mode": "quick" if args.quick else "full",
        "settings": settings,
        "sections": list(sections),
        "machine": hardware.machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in SECTIONS:
        if name in sections:
            children.log(f"== {name}")
            t = time.perf_counter()
            try:
                globals()[f"section_{name}"](results, settings)
            except Exception as e:  # record and go on: one broken section should not lose the others
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                children.log(f"  {name} failed: {e}")
            results.setdefault("section_s", {})[name] = time.perf_counter() - t
    results["total_s"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    results.update(headline(results))
    out = children.BENCH / f"results-{results['mode']}{'-' + '-'.join(args.only) if args.only else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    children.log(f"results in {out} ({results['total_s'] / 60:.1f} min)")
    print_tables(results)
    if args.json:
        print(json.dumps(results, default=str))


def print_tables(r: dict) -> None:
    """A short human summary on stdout."""
    gb = lambda b: f"{b / 2**30:.2f} GiB" if b else "-"
    hw = r.get("hardware", {})
    if hw.get("gemm_peak_flops"):
        print(
            f"fp32 GEMM peak {hw['gemm_peak_flops'] / 1e9:.0f} GFLOP/s, int8 GEMM peak "
            f"{hw['int8_gemm_peak_ops'] / 1e9:.0f} GOP/s ({hw['int8_path']}), "
            f"memory bandwidth {hw['mem_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
        )
    for name in TRAIN_ROWS:
        f = r.get("train", {}).get(name, {})
        if f.get("tokens_per_s"):
            print(
                f"train {name:24} {f['tokens_per_s']:7.1f} tok/s  step {f['step_s']:.2f} s  "
                f"peak RSS {gb(f['peak_rss_bytes'])}  MFU {f.get('mfu', 0):.1%}  "
                f"ckpt {f['checkpoint_bytes'] / 1e6:.1f} MB in {f['checkpoint_save_s']:.3f} s"
            )
    for name in ("llama.cpp", "transformers", "edgetune-fp32", "edgetune-int8", "edgetune-int4"):
        f = r.get("decode", {}).get(name, {})
        if f.get("decode_tokens_per_s"):
            ttfts = "/".join(f"{v * 1000:.0f}" for v in f.get("ttft_by_prompt", {}).values())
            print(
                f"decode {name:14} {f['decode_tokens_per_s']:6.1f} tok/s  TTFT 128/512/2048 {ttfts} ms  "
                f"8 streams {f.get('streams8_tokens_per_s') or 0:6.1f} tok/s  peak RSS {gb(f['peak_rss_bytes'])}"
            )
    for key in (
        "train_speed_ratio",
        "train_rss_ratio",
        "mfu",
        "train_checkpointing_speed_ratio",
        "train_checkpointing_rss_ratio",
        "int8_vs_bf16_speed_ratio",
        "int8_vs_bf16_rss_ratio",
        "int8_vs_bf16_checkpointing_speed_ratio",
        "int8_vs_bf16_checkpointing_rss_ratio",
        "decode_speed_ratio",
        "int4_vs_llama_cpp",
        "int4_spin_vs_llama_cpp",
        "ttft512_llama_cpp_over_int4",
        "streams8_over_one_int4",
        "mixed_adapters_ratio_int4",
        "time_to_skill_ratio",
    ):
        value = r.get(key)
        print(f"{key}: {value:.3f}" if value is not None else f"{key}: -")


if __name__ == "__main__":
    sys.exit(main())
