"""Markdown tables from results files: `python benchmarks/report.py RESULTS.json [RERUN.json ...]`.

A later file (e.g. from `run.py --only skill`) replaces the sections it ran, and its
non-empty headline ratios and MFU. BENCHMARKS.md pastes these tables as they are, so every
figure in it comes from a run.
"""

import json
import sys
from pathlib import Path

import flops
import workloads
from run import TRAIN_ROWS

GiB = 2**30


def _f(value, fmt="{:.2f}", scale=1.0):
    return "—" if value is None else fmt.format(value / scale)


def machine(r: dict) -> str:
    m = r["machine"]
    hw = r.get("hardware", {})
    lines = [
        f"- {m['nproc']} logical CPUs, `{m['cpu']}` ({', '.join(m['simd'])}), "
        f"{m['mem_bytes'] / GiB:.1f} GiB RAM, Python {m['python']}",
        f"- load average (1 min) at start {m['loadavg'][0]:.1f}, at end {m['loadavg_end'][0]:.1f} "
        "(what else ran is not recorded: say it beside the figures)",
        f"- run: {r['mode']}, sections {', '.join(r['sections'])}, started {r['started']}, {r['total_s'] / 60:.1f} min",
    ]
    if hw.get("int8_gemm_peak_ops"):
        lines.append(
            f"- int8 GEMM (ONNX Runtime MatMulInteger, u8·s8, {hw['gemm_n']}², 2 threads, best of 8): "
            f"{hw['int8_gemm_peak_ops'] / 1e9:.0f} GOP/s on MLAS's {hw['int8_path']} kernel"
        )
    if hw.get("gemm_peak_flops"):
        lines.append(
            f"- measured at the start of the run: fp32 GEMM {hw['gemm_peak_flops'] / 1e9:.0f} GFLOP/s "
            f"(torch {hw['gemm_torch_flops'] / 1e9:.0f}, numpy {hw['gemm_numpy_flops'] / 1e9:.0f}; "
            f"{hw['gemm_n']}² matmul, 2 threads, best of 8; MFU uses the best sample of the whole run, below), "
            f"memory bandwidth "
            f"{hw['mem_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (512 MiB numpy copy, read + write)"
        )
    if hw.get("gemm_ort_flops"):
        lines.append(
            f"- the same {hw['gemm_n']}² product in ONNX Runtime's fp32 MatMul (MLAS SGEMM, what edgetune's fp32 "
            f"training runs on): {hw['gemm_ort_flops'] / 1e9:.0f} GFLOP/s; in torch bf16 (what PyTorch's autocast "
            f"runs on): {hw['gemm_torch_bf16_flops'] / 1e9:.0f} GFLOP/s"
        )
    return "\n".join(lines)


def train(r: dict) -> str:
    t = r.get("train", {})
    rows = [
        "| contender | tokens/s | step (s) | CPU s/step | peak RSS | MFU | MFU with attention | MFU of int8 peak "
        "| load (s) | runs (tokens/s) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peak, seq_len = t.get("gemm_peak_flops"), t.get("seq_len") or 0
    attention = flops.attention_flops_per_token(workloads.read_config(workloads.SMOLLM2_HF), seq_len)
    for name in TRAIN_ROWS:
        f = t.get(name)
        if not f:
            continue
        if "error" in f:
            rows.append(f"| {name} | failed: {f['error'][:120]} |||||||||")
            continue
        runs = ", ".join(f"{x:.1f}" for x in f["runs_tokens_per_s"])
        rows.append(
            f"| {name} | {f['tokens_per_s']:.1f} | {f['step_s']:.2f} | {_f(f.get('cpu_s_per_step'))} | "
            f"{f['peak_rss_bytes'] / GiB:.2f} GiB | {_f(f.get('mfu'), '{:.1%}')} | "
            f"{_f(peak and (f['model_flops_per_s'] + attention * f['tokens_per_s']) / peak, '{:.1%}')} | "
            f"{_f(f.get('mfu_int8'), '{:.1%}')} | {f['load_s']:.1f} | "
            f"{runs} | {_f(f.get('loadavg_1min'), '{:.1f}')} |"
        )
    tokens = (t.get("batch") or 0) * (t.get("seq_len") or 0)
    head = (
        f"SmolLM2-135M, batch {t.get('batch')}, seq-len {t.get('seq_len')}, {t.get('steps')} timed steps per run "
        f"after 1 warm-up step; packed dates-task examples with the loss on completions: "
        f"{_f(t.get('labelled_tokens'), '{:.0f}')} of {tokens} positions labelled (`edgetune_all_labels`: every "
        f"position); model FLOPs = {t.get('flops_per_token', 0) / 1e6:.0f} M per labelled token, less the "
        f"LM head's 4·d·V elsewhere; MFU against the run's best fp32 GEMM sample, "
        f"{_f(t.get('gemm_peak_flops'), '{:.0f}', 1e9)} GFLOP/s, and its best int8 GEMM sample, "
        f"{_f(t.get('int8_gemm_peak_ops'), '{:.0f}', 1e9)} GOP/s"
    )
    return head + "\n\n" + "\n".join(rows)


def checkpoint(r: dict) -> str:
    t = r.get("train", {})
    rows = ["| contender | what is saved | size | save time |", "|---|---|---|---|"]
    what = {
        "edgetune": "ORT checkpoint (adapter + AdamW moments) + resume JSON, `checkpoints.save`",
        "torch_fp32": "`peft_model.save_pretrained` + `torch.save(optimizer.state_dict())`",
    }
    for name, text in what.items():
        f = t.get(name, {})
        if f.get("checkpoint_bytes"):
            rows.append(
                f"| {name} | {text} | {f['checkpoint_bytes'] / 1e6:.2f} MB | {f['checkpoint_save_s'] * 1000:.0f} ms |"
            )
    return "\n".join(rows)


def decode(r: dict) -> str:
    d = r.get("decode", {})
    rows = [
        "| contender | decode tokens/s (batch 1) | TTFT 128 / 512 / 2048 (ms) | 8 streams tokens/s | "
        "8 streams TTFT p50 / p95 (ms) | mixed / single adapter | peak RSS | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("llama.cpp", "transformers", "edgetune-fp32", "edgetune-int8", "edgetune-int4"):
        f = d.get(name)
        if not f or "error" in f:
            if f:
                rows.append(f"| {name} | failed: {f['error'][:120]} |||||||")
            continue
        ttft = " / ".join(f"{v * 1000:.0f}" for v in f.get("ttft_by_prompt", {}).values())
        p50, p95 = f.get("streams8_ttft_p50_s"), f.get("streams8_ttft_p95_s")
        latency = f"{p50 * 1000:.0f} / {p95 * 1000:.0f}" if p50 else "-"
        rows.append(
            f"| {name} | {f['decode_tokens_per_s']:.1f} | {ttft} | {_f(f.get('streams8_tokens_per_s'), '{:.1f}')} | "
            f"{latency} | {_f(f.get('mixed_adapters_ratio'), '{:.2f}')} | {f['peak_rss_bytes'] / GiB:.2f} GiB | "
            f"{f['loadavg'][0]:.1f} → {f['loadavg'][1]:.1f} |"
        )
    tail = (
        f"\nBound: {d.get('weight_bytes_per_token', 0) / 1e6:.0f} MB of fp32 weights read per token → "
        f"{_f(d.get('bound_tokens_per_s'), '{:.1f}')} tokens/s at the measured bandwidth; edgetune-fp32 at "
        f"{_f(d.get('edgetune-fp32', {}).get('fraction_of_bound'), '{:.0%}')} of it."
    )
    return "\n".join(rows) + "\n" + tail


def skill(r: dict) -> str:
    s = r.get("skill")
    if not s:
        return "(not run)"
    if "error" in s and "edgetune" not in s:
        return f"failed: {s['error']}"
    rows = [
        "| contender | wall (s) | steps | reached | peak RSS | exact match by step (elapsed s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("edgetune", "torch"):
        f = s.get(name, {})
        if "error" in f:
            rows.append(f"| {name} | failed: {f['error'][:160]} |||||")
            continue
        hist = ", ".join(f"{h['step']}: {h['accuracy']:.0%} ({h['elapsed_s']:.0f})" for h in f["history"])
        rows.append(
            f"| {name} | {f['wall_s']:.0f} | {f['steps']} | {f['reached']} | "
            f"{f['peak_rss_bytes'] / GiB:.2f} GiB | {hist} |"
        )
    return "\n".join(rows)


def build(r: dict) -> str:
    b = r.get("build")
    if not b:
        return "(not run)"
    if "error" in b:
        return f"failed: {b['error']}"
    return (
        f"`{b['command']}`\n\n| wall | peak RSS | bundle on disk | fp32 weights | ratio | checkpoint |\n"
        f"|---|---|---|---|---|---|\n| {b['wall_s']:.0f} s | {b['peak_rss_bytes'] / GiB:.2f} GiB "
        f"({b['peak_rss_bytes'] / b['fp32_weights_bytes']:.1f}× weights) | {b['bundle_bytes'] / 1e6:.0f} MB | "
        f"{b['fp32_weights_bytes'] / 1e6:.0f} MB | {b['bundle_bytes'] / b['fp32_weights_bytes']:.2f}× | "
        f"{b['checkpoint_bytes'] / 1e6:.2f} MB |"
    )


def scaling(r: dict) -> str:
    s = r.get("scaling")
    if not s:
        return "(not run)"
    rows = [
        "| point | edgetune tokens/s | PyTorch fp32 tokens/s | ratio "
        "| edgetune peak RSS | PyTorch peak RSS | RSS ratio |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(label, v):
        e, t = v.get("edgetune", {}), v.get("torch_fp32", {})
        et, tt = e.get("tokens_per_s"), t.get("tokens_per_s")
        er, tr = e.get("peak_rss_bytes"), t.get("peak_rss_bytes")
        rows.append(
            f"| {label} | {_f(et, '{:.1f}')} | {_f(tt, '{:.1f}')} | "
            f"{_f(et / tt if et and tt else None)} | {_f(er, '{:.2f} GiB', GiB)} | {_f(tr, '{:.2f} GiB', GiB)} | "
            f"{_f(er / tr if er and tr else None)} |"
        )

    for seq_len, v in sorted(s["seq_len"].items(), key=lambda kv: int(kv[0])):
        row(f"SmolLM2-135M, seq {seq_len}", v)
    builds = []
    for name, v in s["models"].items():
        row(f"{name} ({v['params'] / 1e6:.0f} M params), seq 512" if v.get("params") else name, v)
        b = v.get("build")
        if b:
            state = f"failed: {b['error']}" if "error" in b else f"built: {b['bundle_bytes'] / 1e6:.0f} MB bundle"
            rss = (
                f", peak RSS {b['build_peak_rss_bytes'] / GiB:.1f} GiB, {b['build_wall_s']:.0f} s"
                if b.get("build_peak_rss_bytes")
                else ""
            )
            builds.append(f"- {name} bundle: {state}{rss}")
    return "\n".join(rows) + ("\n\n" + "\n".join(builds) if builds else "")


def headline(r: dict) -> str:
    keys = (
        "train_speed_ratio",
        "train_rss_ratio",
        "mfu",
        "mfu_torch_fp32",
        "int8_vs_bf16_speed_ratio",
        "int8_vs_bf16_rss_ratio",
        "int8_vs_bf16_checkpointing_speed_ratio",
        "int8_vs_bf16_checkpointing_rss_ratio",
        "mfu_int8",
        "mfu_int8_of_int8_peak",
        "train_checkpointing_speed_ratio",
        "train_checkpointing_rss_ratio",
        "decode_speed_ratio",
        "ttft_ratio",
        "time_to_skill_ratio",
        "checkpoint_save_ratio",
    )
    return "\n".join(f"- `{k}` = {_f(r.get(k), '{:.3f}')}" for k in keys)


def main() -> None:
    r = json.loads(Path(sys.argv[1]).read_text())
    for path in sys.argv[2:]:
        rerun = json.loads(Path(path).read_text())
        for name in rerun["sections"]:
            r[name] = rerun[name]
        r.update({k: v for k, v in rerun.items() if (k.endswith("_ratio") or k.startswith("mfu")) and v is not None})
        print(f"(sections {', '.join(rerun['sections'])} from the run started {rerun['started']})\n")
    for title, fn in (
        ("Machine", machine),
        ("Headline", headline),
        ("Training", train),
        ("Checkpoint", checkpoint),
        ("Decode", decode),
        ("Time to skill", skill),
        ("Build", build),
        ("Scaling", scaling),
    ):
        print(f"### {title}\n\n{fn(r)}\n")


if __name__ == "__main__":
    main()
