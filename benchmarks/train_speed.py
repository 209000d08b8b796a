"""Training throughput and checkpointing: edgetune (ORT Module/Optimizer) vs PyTorch + PEFT.

edgetune side: a tight loop on the same ORT training API and session options as
`edgetune.runtime.train` (Module + Optimizer on the bundle's training/eval/optimizer
graphs, `allow_spinning=0`), so the figures are the runtime's, without data loading.
PyTorch side: transformers + PEFT LoRA (same r, alpha, targets), torch.optim.AdamW, fp32;
and a bf16-autocast line as a reference only (it is not what the target compares with).
The `_int8` rows train a bundle built with `--compute int8` (the frozen Linears as int8
GEMMs, forward and backward), beside PyTorch with bf16 autocast, its target. The
`_checkpointing` rows recompute each layer in the backward pass on both sides: bundles
built with `--gradient-checkpointing` against transformers' `gradient_checkpointing_enable()`
(non-reentrant, as PEFT's QLoRA recipe sets it).
Both see the same fixed (B, S) batch (`workloads.fixed_batch`: packed dates-task examples, the
loss on completions only, as in instruction tuning) and count B*S tokens per step; the
`all_labels` variant makes every next token a target (plain-text training).
After the timed steps each side saves a checkpoint (adapter + optimizer state).
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import children
import flops
import hardware
import workloads


def _timed_steps(step, warmup: int, steps: int) -> tuple[list, list, list]:
    """Run `step` (one optimizer step, returns the loss) warmup + steps times -> wall and CPU
    times of the timed steps, and every loss."""
    times, cpu_times, losses = [], [], []
    for i in range(warmup + steps):
        t, c = time.perf_counter(), time.process_time()
        losses.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    return times, cpu_times, losses


def _steps_report(step_times: list, cpu_times: list, losses: list, config: dict, labels, load_s: float) -> dict:
    """Medians over the timed steps; cpu_s_per_step (process CPU time) is less hurt by a busy machine."""
    step = children.median(step_times)
    tokens, labelled = labels.size, int((labels != -100).sum())
    return {
        "step_s": step,
        "step_times": step_times,
        "tokens_per_s": tokens / step,
        "labelled_tokens": labelled,
        "cpu_s_per_step": children.median(cpu_times),
        "model_flops_per_s": flops.train_flops_per_step(config, tokens, labelled) / step,
        "load_s": load_s,
        "losses": losses,
    }


def run_edgetune(o: dict) -> dict:
    """Tight loop: module(input_ids, attention_mask, position_ids, labels) -> optimizer.step()."""
    import numpy as np

    from edgetune.common.names import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL
    from edgetune.runtime import checkpoints
    from edgetune.runtime.ort_training import CheckpointState, Module, Optimizer, training_session_options

    started = time.perf_counter()
    bundle = Path(o["bundle"])
    config = workloads.read_config(bundle)
    ids, labels = workloads.fixed_batch(o["batch"], o["seq_len"], config["vocab_size"], o.get("all_labels", False))
    mask = np.ones_like(ids)  # (B, S)
    positions = np.tile(np.arange(o["seq_len"], dtype=np.int64), (o["batch"], 1))
    options = training_session_options()  # as edgetune train
    state = CheckpointState.load_checkpoint(str(bundle / CHECKPOINT))
    module = Module(str(bundle / TRAINING_MODEL), state, str(bundle / EVAL_MODEL), session_options=options)
    optimizer = Optimizer(str(bundle / OPTIMIZER_MODEL), module)
    optimizer.set_learning_rate(2e-4)
    module.train()
    load_s = time.perf_counter() - started
    gemm, int8_gemm = hardware.gemm_flops(), hardware.int8_gemm_ops()

    given = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}
    feeds = [given[name] for name in module.input_names()]  # in graph order (Gemma's takes no position_ids)

    def step() -> float:
        loss = module(*feeds)
        optimizer.step()
        module.lazy_reset_grad()
        return float(loss)

    report = _steps_report(*_timed_steps(step, o["warmup"], o["steps"]), config, labels, load_s)
    report["gemm_flops"] = max(gemm, hardware.gemm_flops())
    report["int8_gemm_ops"] = max(int8_gemm, hardware.int8_gemm_ops())
    with tempfile.TemporaryDirectory(dir=children.BENCH) as tmp:  # same disk as the bundle
        t = time.perf_counter()
        _folder, size = checkpoints.save(Path(tmp), state, {"step": len(report["losses"])})
        report.update(checkpoint_save_s=time.perf_counter() - t, checkpoint_bytes=size)
    return report


def run_torch(o: dict) -> dict:
    """transformers + PEFT, fp32 (or bf16 autocast when o['bf16']), AdamW on the LoRA weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    torch.set_num_threads(o.get("threads", 2))
    model = AutoModelForCausalLM.from_pretrained(o["model"], dtype=torch.float32)
    model.config.use_cache = False
    config = model.config.to_dict()
    if o.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft = get_peft_model(model, LoraConfig(lora_dropout=0.0, **o.get("lora", workloads.LORA)))
    trainable = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, eps=1e-8, weight_decay=0.0)
    ids, labels = workloads.fixed_batch(o["batch"], o["seq_len"], config["vocab_size"], o.get("all_labels", False))
    inputs, targets = torch.from_numpy(ids), torch.from_numpy(workloads.hf_labels(labels))
    peft.train()
    load_s = time.perf_counter() - started
    gemm = hardware.gemm_flops()

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(o.get("bf16"))):
            loss = peft(input_ids=inputs, labels=targets).loss  # HF shifts the labels itself
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    report = _steps_report(*_timed_steps(step, o["warmup"], o["steps"]), config, labels, load_s)
    report["gemm_flops"] = max(gemm, hardware.gemm_flops())
    with tempfile.TemporaryDirectory(dir=children.BENCH) as tmp:
        t = time.perf_counter()
        peft.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        report.update(checkpoint_save_s=time.perf_counter() - t, checkpoint_bytes=workloads.dir_bytes(Path(tmp)))
    return report


def contenders(
    bundle: Path,
    model_dir: Path,
    batch: int,
    seq_len: int,
    steps: int,
    warmup: int,
    extras: bool = False,
    checkpointed_bundle: Path | None = None,
    int8_bundles: tuple[Path, Path] | None = None,
) -> dict:
    """name -> child options for one (model, batch, seq_len) point.

    extras: also edgetune with every token labelled, PyTorch bf16 autocast, and PyTorch fp32
    with OpenMP's default spin-waiting. (PyTorch computes every position's logits whatever
    the labels, so its cost does not depend on them.) checkpointed_bundle: also the
    gradient-checkpointing pair. int8_bundles: (plain, checkpointed) bundles built with
    `--compute int8`, with PyTorch bf16 autocast beside each.
    """
    base = {"batch": batch, "seq_len": seq_len, "steps": steps, "warmup": warmup}
    torch = {"impl": "torch", "model": str(model_dir), **base}
    found = {
        "edgetune": {"impl": "edgetune", "bundle": str(bundle), **base},
        "torch_fp32": {**torch, "env": children.NO_SPIN},
    }
    if extras:
        found["edgetune_all_labels"] = {**found["edgetune"], "all_labels": True}
        found["torch_bf16"] = {**torch, "bf16": True, "env": children.NO_SPIN}
        found["torch_fp32_spin"] = torch
    if checkpointed_bundle is not None:
        found["edgetune_checkpointing"] = {**found["edgetune"], "bundle": str(checkpointed_bundle)}
        found["torch_fp32_checkpointing"] = {**found["torch_fp32"], "checkpointing": True}
    if int8_bundles is not None:
        found["edgetune_int8"] = {**found["edgetune"], "bundle": str(int8_bundles[0])}
        found["edgetune_int8_checkpointing"] = {**found["edgetune"], "bundle": str(int8_bundles[1])}
        found["torch_bf16"] = {**torch, "bf16": True, "env": children.NO_SPIN}
        found["torch_bf16_checkpointing"] = {**found["torch_bf16"], "checkpointing": True}
    return found


def measure(points: dict, rounds: int, timeout: float = 1800) -> dict:
    """Alternate the contenders `rounds` times; medians of tokens/s, step time, peak RSS per contender."""

    def one(name, options):
        run = children.run_child(children.child_cmd("train_speed.py", options), timeout=timeout, env=options.get("env"))
        if run["error"]:
            children.log(f"  {name} failed: {run['error']}")
        return run

    runs = children.alternate(points, rounds, one)
    summary = {}
    for name, results in runs.items():
        ok = [r for r in results if r["result"]]
        if not ok:
            summary[name] = {"error": results[0]["error"]}
            continue
        pick = lambda key, ok=ok: children.median([r["result"].get(key) for r in ok])
        summary[name] = {
            "tokens_per_s": pick("tokens_per_s"),
            "step_s": pick("step_s"),
            "model_flops_per_s": pick("model_flops_per_s"),
            "load_s": pick("load_s"),
            "peak_rss_bytes": children.median([r["peak_rss_bytes"] for r in ok]),
            "checkpoint_bytes": pick("checkpoint_bytes"),
            "checkpoint_save_s": pick("checkpoint_save_s"),
            "cpu_s_per_step": pick("cpu_s_per_step"),
            "labelled_tokens": pick("labelled_tokens"),
            "gemm_flops_max": max(r["result"]["gemm_flops"] for r in ok),
            "int8_gemm_ops_max": max(r["result"].get("int8_gemm_ops", 0) for r in ok),
            "loadavg_1min": children.median([sum(r["loadavg"]) / 2 for r in ok]),
            "runs_tokens_per_s": [r["result"]["tokens_per_s"] for r in ok],
            "runs_peak_rss_bytes": [r["peak_rss_bytes"] for r in ok],
            "first_losses": ok[0]["result"]["losses"][:3],
            "failed_runs": len(results) - len(ok),
        }
    return summary


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"edgetune": run_edgetune, "torch": run_torch})
