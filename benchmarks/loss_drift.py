"""How far training losses drift between two runs that differ only in arithmetic: baselines for int8 compute.

    .venv/bin/python benchmarks/loss_drift.py [--steps 50] [--task dates|emails] [--only NAME ...] [--report]

int8 compute's criterion is "the first 50 training losses within 2% of fp32"
(benchmarks/int8_accuracy.py). This measures the same statistics between runs that
differ only in arithmetic: edgetune fp32 against itself (run again, with 1 ORT intra-op
thread instead of 2, with ORT's basic graph optimizations instead of all), PyTorch + PEFT
fp32 against itself with 1 thread instead of 2 and against bf16 autocast, PyTorch fp32
against edgetune fp32; beside them edgetune's int8 compute against fp32, and edgetune fp32
from a starting adapter changed by a relative 1e-6 or 1e-3 (same arithmetic, another start). (`taskset -c 0`
would not give edgetune another thread count: ORT 1.19 sizes its default pool from the
cores, not the affinity mask, so the thread count is set in the session options.)

Every run: the embedded SmolLM2-135M-Instruct, the demo's adapter, data and settings
(methods.py's ADAPTER and TRAIN; `--steps` replaces TRAIN's 150, and the cosine schedule
follows it, as in `int8_accuracy.py --steps 50`), the same batches in the same order.
edgetune runs go through the CLI on int8_accuracy.py's LoRA bundles (built once under
artifacts/int8_accuracy). PyTorch runs (transformers + PEFT, in a child process,
OMP_WAIT_POLICY=PASSIVE) train from the bundle's initial adapter on the batches
`edgetune train` makes (the bundle's tokenizer and batching, seed 0, epoch 0), with the
same learning rate per step and torch.optim.AdamW with the optimizer graph's betas, eps
and weight decay. Results: artifacts/loss_drift/results.json.

`--task emails`: the same runs on `int8_accuracy.py --task emails`'s plain text (SpamAssassin
messages, every token a target) at seq-len 128, where the losses stay near 4 instead of
falling under 0.1. Results: artifacts/loss_drift/results-emails.json.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import children
import workloads
from int8_accuracy import OUT as BUNDLES
from int8_accuracy import RUNS as BUILDS
from int8_accuracy import emails_data, loss_stats, slug, train_flags
from methods import ADAPTER, TRAIN, load, log, run

OUT = children.ROOT / "artifacts" / "loss_drift"
RUNS = {  # name -> how it trains
    "edgetune fp32": {"impl": "edgetune", "bundle": "LoRA"},
    "edgetune fp32, again": {"impl": "edgetune", "bundle": "LoRA"},
    "edgetune fp32, 1 thread": {"impl": "edgetune", "bundle": "LoRA", "threads": 1},
    "edgetune fp32, basic graph optimizations": {"impl": "edgetune", "bundle": "LoRA", "opt": "basic"},
    "edgetune int8 compute": {"impl": "edgetune", "bundle": "LoRA, int8 compute"},
    "edgetune fp32, initial adapter as a PEFT folder": {"impl": "edgetune", "bundle": "LoRA", "perturb": 0.0},
    "edgetune fp32, initial A × (1 + 1e-6·N(0,1))": {"impl": "edgetune", "bundle": "LoRA", "perturb": 1e-6},
    "edgetune fp32, initial A × (1 + 1e-3·N(0,1))": {"impl": "edgetune", "bundle": "LoRA", "perturb": 1e-3},
    "PyTorch fp32": {"impl": "torch", "threads": 2, "bf16": False},
    "PyTorch fp32, 1 thread": {"impl": "torch", "threads": 1, "bf16": False},
    "PyTorch bf16 autocast": {"impl": "torch", "threads": 2, "bf16": True},
}
PAIRS = [  # (run, reference)
    ("edgetune fp32, again", "edgetune fp32"),
    ("edgetune fp32, 1 thread", "edgetune fp32"),
    ("edgetune fp32, basic graph optimizations", "edgetune fp32"),
    ("PyTorch fp32, 1 thread", "PyTorch fp32"),
    ("PyTorch fp32", "edgetune fp32"),
    ("PyTorch bf16 autocast", "PyTorch fp32"),
    ("edgetune int8 compute", "edgetune fp32"),
    ("edgetune fp32, initial adapter as a PEFT folder", "edgetune fp32"),
    ("edgetune fp32, initial A × (1 + 1e-6·N(0,1))", "edgetune fp32"),
    ("edgetune fp32, initial A × (1 + 1e-3·N(0,1))", "edgetune fp32"),
]


def option(name: str) -> str:
    """A value of methods.py's TRAIN (the demo's training flags)."""
    return TRAIN[TRAIN.index(name) + 1]


def bundle_path(name: str) -> Path:
    """int8_accuracy.py's bundle `name`, built once with its flags and the demo's adapter."""
    bundle = BUNDLES / slug(name)
    if not (bundle / "manifest.json").is_file():
        from edgetune.common.embedded import smollm2_gguf

        log(f"build {name}")
        run(["build", smollm2_gguf(), "-o", bundle, *BUILDS[name], *ADAPTER, "--force"])
    return bundle


def train_edgetune(name: str, o: dict, data: Path, steps: int) -> dict:
    """`edgetune train` with the demo's flags and `steps`; its loss per step.

    The CLI runs in a child that may change the training session's options (`cli_with_options`):
    the CLI has no flag for ORT's thread count or graph optimization level.
    """
    run_dir = OUT / (slug(name) if o["task"] == "dates" else f"{o['task']}-{slug(name)}")
    args = [
        "train",
        bundle_path(o["bundle"]),
        "--data",
        data / "train.jsonl",
        "-o",
        run_dir,
        *train_flags(steps, o["task"]),
    ]
    shutil.rmtree(run_dir, ignore_errors=True)
    if "perturb" in o:
        args += ["--init-adapter", perturbed_initial_adapter(bundle_path(o["bundle"]), o["perturb"], run_dir)]
    session = {k: o[k] for k in ("threads", "opt") if k in o}
    cmd = [children.PYTHON, __file__, "cli", json.dumps(session), *map(str, args)]
    start_load, started = load(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=children.ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: rc={proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m.get("type") == "train"]
    return {**o, "losses": losses, "wall_s": time.perf_counter() - started, "loads": [start_load, load()]}


def perturbed_initial_adapter(bundle: Path, eps: float, run_dir: Path) -> Path:
    """The bundle's initial adapter as a PEFT folder beside `run_dir`, each lora_A element times
    (1 + eps·N(0, 1)) (seed 0; B starts at zero): how far a tiny change of the starting point
    moves the losses, with no change of arithmetic."""
    import numpy as np

    from edgetune.common.manifest import read_manifest
    from edgetune.common.peft import save_adapter
    from edgetune.runtime.bundle_checkpoint import bundle_adapter

    manifest = read_manifest(bundle)
    weights = bundle_adapter(bundle, manifest)
    rng = np.random.default_rng(0)
    for key, value in weights.items():
        if "lora_A" in key:
            weights[key] = (value * (1 + eps * rng.standard_normal(value.shape))).astype(value.dtype)
    folder = run_dir.with_name(run_dir.name + "-init")
    shutil.rmtree(folder, ignore_errors=True)
    save_adapter(folder, weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    return folder


def cli_with_options(session: dict, argv: list) -> int:
    """Child: the edgetune CLI, its training sessions with `session`'s intra-op threads and
    graph optimization level ("basic") where given; ORT's defaults (one thread per core, all
    optimizations) otherwise, as `edgetune train` runs."""
    import onnxruntime as ort

    from edgetune import cli
    from edgetune.runtime import train

    default = train.training_session_options

    def options():
        so = default()
        if "threads" in session:
            so.intra_op_num_threads = session["threads"]
        if session.get("opt") == "basic":
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return so

    train.training_session_options = options
    return cli.main(argv)


def train_torch(name: str, o: dict, data: Path, steps: int) -> dict:
    """A PyTorch run in a child process (children.run_child); its loss per step."""
    options = {**o, "bundle": str(bundle_path("LoRA")), "data": str(data), "steps": steps}
    options["model"] = str(workloads.ensure_smollm2_hf())
    start_load = load()
    child = children.run_child(children.child_cmd("loss_drift.py", options), timeout=3600, env=children.NO_SPIN)
    if child["error"]:
        raise RuntimeError(f"{name}: {child['error']}")
    return {**o, **child["result"], "wall_s": child["wall_s"], "loads": [start_load, load()]}


def edgetune_batches(bundle: Path, data: Path, steps: int, seq_len: int) -> list:
    """The first `steps` batches `edgetune train` feeds with the demo's flags at `seq_len` (one per step)."""
    from edgetune.common.manifest import read_manifest
    from edgetune.options import TrainConfig
    from edgetune.runtime.tasks import task_for

    config = TrainConfig(bundle, data, OUT / "unused", batch_size=int(option("--batch-size")), seq_len=seq_len)
    task = task_for(config, read_manifest(bundle))
    encoded = task.encode(data, False)[0]
    batches = task.batches(encoded, 0, config.seed)
    assert len(batches) >= steps, "the steps must stay in the first epoch"
    return batches[:steps]


def initial_peft_model(o: dict):
    """transformers' SmolLM2 with the bundle's initial adapter (A from the bundle's seed, B zero) as PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgetune.common.manifest import read_manifest
    from edgetune.common.peft import save_adapter
    from edgetune.runtime.bundle_checkpoint import bundle_adapter

    bundle = Path(o["bundle"])
    manifest = read_manifest(bundle)
    weights = bundle_adapter(bundle, manifest)
    model = AutoModelForCausalLM.from_pretrained(o["model"], dtype=torch.float32)
    model.config.use_cache = False
    with tempfile.TemporaryDirectory() as folder:
        save_adapter(Path(folder), weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
        return PeftModel.from_pretrained(model, folder, is_trainable=True)


def adamw_settings(bundle: Path) -> dict:
    """torch.optim.AdamW's keywords from the bundle's optimizer graph (its AdamWOptimizer node)."""
    import onnx

    from edgetune.common.names import OPTIMIZER_MODEL

    node = next(n for n in onnx.load(bundle / OPTIMIZER_MODEL).graph.node if n.op_type == "AdamWOptimizer")
    a = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    assert a["adam_mode"] == 0 and a["correct_bias"] == 1, "not torch.optim.AdamW's update"
    return {"betas": (a["alpha"], a["beta"]), "eps": a["epsilon"], "weight_decay": a["weight_decay"]}


def run_torch(o: dict) -> dict:
    """Child: PyTorch + PEFT on edgetune's batches, its schedule and AdamW; fp32 or bf16 autocast."""
    import torch

    from edgetune.runtime.schedule import learning_rate, warmup_steps

    torch.set_num_threads(o["threads"])
    bundle, steps, peak = Path(o["bundle"]), o["steps"], float(option("--lr"))
    flags = train_flags(steps, o["task"])
    seq_len = int(flags[flags.index("--seq-len") + 1])
    batches = edgetune_batches(bundle, Path(o["data"]) / "train.jsonl", steps, seq_len)
    model = initial_peft_model(o)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=peak, **adamw_settings(bundle))
    warmup = warmup_steps(float(option("--warmup")), steps)
    model.train()
    losses = []
    for step, b in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak, warmup, "cosine")
        feeds = {k: torch.from_numpy(getattr(b, k)) for k in ("input_ids", "attention_mask", "position_ids")}
        labels = torch.from_numpy(workloads.hf_labels(b.labels))  # HF shifts the labels itself
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=o["bf16"]):
            loss = model(**feeds, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"losses": losses, "torch_threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--task", choices=["dates", "emails"], default="dates", help="the demo's task, or plain text")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="run only these (the others are kept)")
    parser.add_argument("--report", action="store_true", help="only print the table of the last results")
    args = parser.parse_args()
    path = OUT / ("results.json" if args.task == "dates" else f"results-{args.task}.json")
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if not args.report:
        OUT.mkdir(parents=True, exist_ok=True)
        if args.task == "dates":
            data = BUNDLES / "data"
            run(["data", "dates", "-o", data, "--train", "2000", "--heldout", "100", "--seed", "0"])
        else:
            data = emails_data()
        results["steps"] = args.steps
        for name in args.only or RUNS:
            log(f"{name}: train {args.steps} steps")
            train = train_edgetune if RUNS[name]["impl"] == "edgetune" else train_torch
            results["runs"][name] = {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **train(name, {**RUNS[name], "task": args.task}, data, args.steps),
            }
            path.write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0


def pct(x: float, sign: str = "") -> str:
    """A relative difference in percent: one decimal, or one significant digit under 0.1% (0 if exact)."""
    if x == 0 or abs(x) >= 0.001:
        return f"{x:{sign}.1%}"
    return f"{x * 100:{sign}.1g}%"


def report(results: dict) -> str:
    """The pairs as markdown, with int8_accuracy.py's columns."""
    lines = [
        "| run against its reference | bit-identical steps | first 10 steps: largest, mean loss Δ "
        "| first 50: largest, mean, mean abs | steps within 2% (of 50) |",
        "|---|---|---|---|---|",
    ]
    runs = results["runs"]
    for a, b in PAIRS:
        if a not in runs or b not in runs:
            continue
        s = loss_stats(runs[a]["losses"], runs[b]["losses"])
        same = sum(x == y for x, y in zip(runs[a]["losses"], runs[b]["losses"]))
        lines.append(
            f"| {a} against {b} | {same} | {pct(s['first10_max'])}, {pct(s['first10_mean'], '+')} | "
            f"{pct(s['first50_max'])}, {pct(s['first50_mean'], '+')}, {pct(s['first50_mean_abs'])} | "
            f"{s['within_2pct']} |"
        )
    lines += ["", "| run | loss at steps 1, 10, 50 | wall | load average (start, end) |", "|---|---|---|---|"]
    for name, r in runs.items():
        shown = ", ".join(f"{r['losses'][i]:.4f}" for i in (0, 9, len(r["losses"]) - 1))
        lines.append(f"| {name} | {shown} | {r['wall_s']:.0f} s | {r['loads'][0]:.1f}, {r['loads'][1]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"torch": run_torch})
elif __name__ == "__main__" and sys.argv[1:2] == ["cli"]:
    sys.exit(cli_with_options(json.loads(sys.argv[2]), sys.argv[3:]))
elif __name__ == "__main__":
    sys.exit(main())
