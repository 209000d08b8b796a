"""MiniLM on SpamAssassin: edgetune against PyTorch + PEFT, side by side, each contender in its own child.

    python benchmarks/encoder.py [--steps 300] [--torch-steps N] [--seq-len 96] [--batch-size 16] [--predict-only]
                                 [--json out.json]

Both train the same LoRA (r=8, alpha=16 on query/value) plus a new classification head,
on the same batches (edgetune's own features and batch order), with AdamW and the same
learning-rate schedule; edgetune in fp32, PyTorch in fp32 and again under bf16 autocast.
The PyTorch side runs with OMP_WAIT_POLICY=PASSIVE, as edgetune's sessions do not spin
(see benchmarks/children.py). Reported per contender: training tokens/s (real tokens over
the summed step times), CPU seconds of training, peak RSS of the training process,
held-out test accuracy after training, and batched prediction throughput on the test split
(emails/s, batch 32, same seq-len; edgetune int8 and fp32, PyTorch fp32 and bf16, each on
the adapter its own training made), each prediction in a process of its own. Needs
artifacts/spam/data (scripts/spam_data.py) and builds artifacts/spam/bundle if it is missing.
"""

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import children

ROOT = children.ROOT
DATA = ROOT / "artifacts" / "spam" / "data"
BUNDLES = {"fp32": ROOT / "artifacts" / "spam" / "bundle", "int8": ROOT / "artifacts" / "spam" / "bundle-int8"}
BUNDLE = BUNDLES["fp32"]  # PyTorch's side reads its tokenizer and manifest
LABELS = ["ham", "spam"]
PREDICT_BATCH = 32


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _hparams(o: dict) -> dict:
    return dict(lr=o["lr"], warmup=10, schedule="cosine", batch_size=o["batch_size"], seq_len=o["seq_len"], seed=0)


def edgetune_train(o: dict) -> dict:
    """The runtime's own recipe (no eval during training)."""
    from edgetune.options import TrainConfig
    from edgetune.runtime.train import train

    cpu = _cpu_s()
    bundle = BUNDLES[o["compute"]]
    config = TrainConfig(bundle, DATA / "train.jsonl", Path(o["out"]), steps=o["steps"], progress=False, **_hparams(o))
    summary = train(config)
    return {
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": summary["train_s"],
        "cpu_s": _cpu_s() - cpu,
        "adapter": summary["adapter"],
    }


def torch_train(o: dict) -> dict:
    """transformers + PEFT on the same batches, AdamW, the same schedule; the adapter saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from edgetune.common.embedded import minilm_dir
    from edgetune.common.manifest import read_manifest
    from edgetune.options import TrainConfig
    from edgetune.runtime.schedule import learning_rate, warmup_steps
    from edgetune.runtime.tasks import task_for

    cpu = _cpu_s()
    config = TrainConfig(BUNDLE, DATA / "train.jsonl", Path(o["out"]), steps=o["steps"], progress=False, **_hparams(o))
    task = task_for(config, read_manifest(BUNDLE))
    features, _, _ = task.encode(config.data, False)
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), dtype=torch.float32, **labels)
    model = get_peft_model(
        model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"])
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, eps=1e-8, weight_decay=0.0)
    steps_per_epoch = -(-len(features) // config.batch_size)
    warm, tokens, step_s = warmup_steps(config.warmup, config.steps), 0, 0.0
    for step in range(config.steps):
        epoch, index = divmod(step, steps_per_epoch)
        if index == 0:
            batches = task.batches(features, epoch, config.seed)
        batch = batches[index]
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, config.steps, config.lr, warm, config.schedule)
        started = time.perf_counter()
        inputs = {k: torch.from_numpy(batch.arrays[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with _autocast(torch, o):
            loss = model(**inputs, labels=torch.from_numpy(batch.labels)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        step_s += time.perf_counter() - started
        tokens += int(batch.attention_mask.sum())
    model.save_pretrained(o["out"] + "/adapter")
    return {
        "tokens_per_s": tokens / step_s,
        "train_s": step_s,
        "cpu_s": _cpu_s() - cpu,
        "adapter": o["out"] + "/adapter",
    }


def _autocast(torch, o: dict):
    """bf16 autocast on the CPU if the options ask for it."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if o.get("bf16") else contextlib.nullcontext()


def edgetune_predict(o: dict) -> dict:
    """Classifier over the test split at o["precision"]: accuracy, emails/s, and the seconds to load it."""
    from edgetune.runtime.predict import Classifier

    started = time.perf_counter()
    classifier = Classifier(
        BUNDLE, o["adapter"], seq_len=o["seq_len"], batch_size=PREDICT_BATCH, precision=o["precision"]
    )
    load_s, started = time.perf_counter() - started, time.perf_counter()
    examples, _, metrics = classifier.predict_file(DATA / "test.jsonl")
    return {"emails_per_s": len(examples) / (time.perf_counter() - started), "load_s": load_s, **metrics}


def torch_predict(o: dict) -> dict:
    """PEFT's adapter on AutoModelForSequenceClassification, batches of the same size: accuracy and emails/s."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from edgetune.common.embedded import minilm_dir
    from edgetune.common.manifest import read_manifest
    from edgetune.options import TrainConfig
    from edgetune.runtime.predictions import decode_outputs, score
    from edgetune.runtime.task_batching import pad_features
    from edgetune.runtime.task_data import read_task_examples
    from edgetune.runtime.tasks import task_for

    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), dtype=torch.float32, **labels)
    model = PeftModel.from_pretrained(base, o["adapter"]).eval()
    config = TrainConfig(BUNDLE, DATA / "test.jsonl", Path("unused"), seq_len=o["seq_len"], progress=False)
    task = task_for(config, read_manifest(BUNDLE))
    started = time.perf_counter()
    examples, _ = read_task_examples(DATA / "test.jsonl", "text-classification", LABELS, labelled=False)
    from edgetune.runtime.task_batching import encode_task

    features = encode_task(examples, task.tokenizer, "text-classification")
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    outputs = [None] * len(features)
    with torch.inference_mode(), _autocast(torch, o):
        for start in range(0, len(order), PREDICT_BATCH):
            rows = order[start : start + PREDICT_BATCH]
            batch = pad_features([features[i] for i in rows], task.info.pad_id)
            inputs = {k: torch.from_numpy(batch.arrays[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
            logits = model(**inputs).logits.float().numpy()
            for b, i in enumerate(rows):
                outputs[i] = (logits[b],)
    predictions = decode_outputs("text-classification", examples, features, outputs, LABELS)
    seconds = time.perf_counter() - started
    return {"emails_per_s": len(examples) / seconds, **score("text-classification", examples, predictions, LABELS)}


HANDLERS = {f.__name__: f for f in (edgetune_train, torch_train, edgetune_predict, torch_predict)}


def _run(impl: str, options: dict, env: dict | None = None) -> dict:
    children.log(f"{impl} ...")
    run = children.run_child(children.child_cmd("encoder.py", {"impl": impl, **options}), timeout=7200, env=env)
    if run["error"]:
        raise SystemExit(f"{impl}: {run['error']}")
    children.log(f"{impl}: {run['result']} (peak RSS {run['peak_rss_bytes'] / 2**20:.0f} MiB, load {run['loadavg']})")
    return {
        **run["result"],
        "peak_rss_bytes": run["peak_rss_bytes"],
        "child_cpu_s": run["cpu_s"],
        "loadavg": run["loadavg"],
    }


def main() -> int:
    """Train and predict with both contenders; print and optionally write the ratios."""
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        children.child_main(HANDLERS)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--compute", choices=tuple(BUNDLES), default="fp32", help="edgetune's bundle: fp32 or int8 compute (--compute)"
    )
    parser.add_argument(
        "--torch-steps", type=int, default=None, help="fewer PyTorch steps (its speed and memory, not its accuracy)"
    )
    parser.add_argument(
        "--predict-only", action="store_true", help="no training: predict with the adapters the last run left"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    for compute in dict.fromkeys(("fp32", args.compute)):
        if not BUNDLES[compute].is_dir():
            from edgetune.builder.pipeline import build_bundle
            from edgetune.common.embedded import minilm_dir
            from edgetune.options import BuildConfig

            out = BUNDLES[compute]
            build_bundle(
                BuildConfig(str(minilm_dir()), out, task="text-classification", labels=LABELS, compute=compute)
            )
    out = children.BENCH / "encoder"
    common = {"steps": args.steps, "seq_len": args.seq_len, "batch_size": args.batch_size, "lr": args.lr}
    results = {}
    contenders = {  # name: (impl, train options, [(prediction name, its options)])
        "edgetune": (
            "edgetune",
            {"compute": args.compute},
            [("int8", {"precision": "int8"}), ("fp32", {"precision": "fp32"})],
        ),
        "torch": ("torch", {}, [("fp32", {})]),
        "torch_bf16": ("torch", {"bf16": True}, [("bf16", {"bf16": True})]),
    }
    for name, (impl, extra, predictions) in contenders.items():
        run_dir = out / name
        env = children.NO_SPIN if impl == "torch" else None
        steps = args.torch_steps if impl == "torch" and args.torch_steps else args.steps
        if args.predict_only:
            trained = {"adapter": str(run_dir / "adapter")}
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            trained = _run(f"{impl}_train", {**common, **extra, "steps": steps, "out": str(run_dir)}, env)
        results[name] = {"train": trained}
        for label, options in predictions:
            predict_options = {"adapter": trained["adapter"], "seq_len": args.seq_len, **options}
            results[name][f"predict_{label}"] = _run(f"{impl}_predict", predict_options, env)
    e, t, b = results["edgetune"], results["torch"], results["torch_bf16"]
    ratios = {}
    if not args.predict_only:
        ratios = {
            "train_tokens_per_s": e["train"]["tokens_per_s"] / t["train"]["tokens_per_s"],
            "train_tokens_per_s_vs_bf16": e["train"]["tokens_per_s"] / b["train"]["tokens_per_s"],
            "train_peak_rss": e["train"]["peak_rss_bytes"] / t["train"]["peak_rss_bytes"],
            "train_peak_rss_vs_bf16": e["train"]["peak_rss_bytes"] / b["train"]["peak_rss_bytes"],
        }
    for mine in ("int8", "fp32"):
        for theirs, result in (("fp32", t["predict_fp32"]), ("bf16", b["predict_bf16"])):
            ratios[f"predict_{mine}_vs_{theirs}"] = e[f"predict_{mine}"]["emails_per_s"] / result["emails_per_s"]
    report = {"options": common | {"compute": args.compute}, "results": results, "ratios": ratios}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
