"""The models and data every contender shares: the SmolLM2 bundle and HF folder, fixed batches."""

import json
import subprocess
import sys
from pathlib import Path

from children import BENCH, ROOT
from edgetune.common.embedded import smollm2_gguf

SMOLLM2_BUNDLE = ROOT / "artifacts" / "smollm2"  # built by the team (r=8 on q/v, adamw)
SMOLLM2_CHECKPOINTED = ROOT / "artifacts" / "smollm2-checkpointing"  # the same with --gradient-checkpointing
SMOLLM2_HF = BENCH / "smollm2-hf"  # the same weights as a plain fp32 HF folder
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def ensure_smollm2_bundle(checkpointing: bool = False, compute: str = "fp32") -> Path:
    """The SmolLM2 bundle every edgetune contender uses (r=8 on q/v, AdamW), built once from the GGUF.

    checkpointing: the same built with --gradient-checkpointing; compute: its --compute.
    """
    out = SMOLLM2_CHECKPOINTED if checkpointing else SMOLLM2_BUNDLE
    if compute != "fp32":  # not smollm2-int8: that name is ensure_smollm2_serving's int8 serving bundle
        out = out.with_name(f"smollm2-compute-{compute}" + ("-checkpointing" if checkpointing else ""))
    if not (out / "manifest.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "edgetune.cli",
                "build",
                str(smollm2_gguf()),
                "-o",
                str(out),
                "--targets",
                "q_proj,v_proj",
                "--rank",
                "8",
                "--alpha",
                "16",
                "--force",
                *(["--gradient-checkpointing"] if checkpointing else []),
                *(["--compute", compute] if compute != "fp32" else []),
            ],
            check=True,
        )
    return out


def ensure_smollm2_serving(quant: str) -> Path:
    """The SmolLM2 bundle (r=8 on q/v) built with `--serve-quant quant`, once."""
    out = ROOT / "artifacts" / f"smollm2-{quant}"
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "edgetune.cli", "build", str(smollm2_gguf()), "-o", str(out)]
        subprocess.run([*cmd, "--targets", "q_proj,v_proj", "--serve-quant", quant, "--force"], check=True)
    return out


def random_adapters(bundle: Path, count: int = 2, scale: float = 0.02) -> list[str]:
    """`count` random PEFT adapters for `bundle` (r=8, its targets), saved once under artifacts/bench/adapters."""
    import numpy as np

    from edgetune.common.manifest import read_manifest
    from edgetune.common.peft import lora_keys, save_adapter
    from edgetune.runtime.engine import Engine

    manifest = read_manifest(bundle)
    shapes = Engine(bundle, max_batch=1).bank.shapes
    paths = []
    for i in range(count):
        folder = BENCH / "adapters" / f"a{i}"
        if not (folder / "adapter_config.json").is_file():
            rng = np.random.default_rng(i)
            weights = {}
            for module in manifest["adapted_modules"]:
                key_a, key_b = lora_keys(module)
                n_in, n_out = shapes[key_a][1], shapes[key_b][2]
                weights[key_a] = (rng.standard_normal((8, n_in)) * scale).astype(np.float32)
                weights[key_b] = (rng.standard_normal((n_out, 8)) * scale).astype(np.float32)
            save_adapter(folder, weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
        paths.append(str(folder))
    return paths


def ensure_smollm2_hf() -> Path:
    """SmolLM2-135M-Instruct from the GGUF, dequantized to fp32 and saved once as a HF folder.

    The PyTorch contenders load this folder (safetensors), as a PyTorch user would load a
    checkpoint; the bundle was built from the same GGUF, so the weights are identical.
    """
    if (SMOLLM2_HF / "config.json").is_file():
        return SMOLLM2_HF
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantized already; save_pretrained refuses otherwise
    tmp = SMOLLM2_HF.with_name(SMOLLM2_HF.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    tmp.rename(SMOLLM2_HF)
    return SMOLLM2_HF


def text_tokens(n: int, tokenizer_json: Path | None = None) -> list:
    """`n` token ids of real text (dates task prompts + answers), with SmolLM2's tokenizer or `tokenizer_json`."""
    import tokenizers

    from edgetune.tasks.dates import make_examples

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json or ensure_smollm2_bundle() / "tokenizer.json"))
    ids, k = [], 0
    while len(ids) < n:
        examples = make_examples(500, seed=k)
        text = "\n\n".join(e["prompt"] + e["completion"] for e in examples)
        ids += tok.encode(text, add_special_tokens=False).ids
        k += 1
    return ids[:n]


def fixed_batch(batch: int, seq_len: int, vocab: int, all_labels: bool = False):
    """One (B, S) batch every contender sees -> (ids, labels), int64, labels already shifted.

    Dates-task examples encoded exactly as `edgetune train` encodes them (prompt, completion,
    EOS; the loss only on completion + EOS, as in instruction tuning), packed back to back
    into B rows of S tokens, ids folded into `vocab`. all_labels: every next token is a
    target instead (plain-text training).
    """
    import numpy as np

    from edgetune.runtime.batching import encode_example, load_tokenizer
    from edgetune.tasks.dates import make_examples

    tokenizer, info = load_tokenizer(ensure_smollm2_bundle())
    ids, labels, k = [], [], 0
    while len(ids) < batch * seq_len + 1:
        for example in make_examples(500, seed=k):
            encoded = encode_example(example, tokenizer, info, 1 << 20)
            ids += encoded.input_ids
            labels += encoded.labels
        k += 1
    flat = np.array(ids[: batch * seq_len + 1], np.int64) % vocab
    if all_labels:
        targets = flat[1:]
    else:
        targets = np.array(labels[: batch * seq_len], np.int64)
        targets = np.where(targets >= 0, targets % vocab, targets)
    ids, labels = flat[:-1].reshape(batch, seq_len), targets.reshape(batch, seq_len).copy()
    labels[:, -1] = -100  # a row's last target lies in the next row
    return ids, labels


def hf_labels(labels):
    """Shifted labels (target of position t at t) -> the unshifted form transformers shifts itself."""
    import numpy as np

    return np.concatenate([np.full((labels.shape[0], 1), -100, np.int64), labels[:, :-1]], axis=1)


def read_config(folder: Path) -> dict:
    """A folder's config.json."""
    with open(Path(folder) / "config.json") as f:
        return json.load(f)


def dir_bytes(folder: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
