"""Build tiny random decoders (and the real SmolLM2) as inference folders for generation tests.

A folder holds what `Generator` reads: model.onnx (Optimum's with-past export),
config.json, generation_config.json, the tokenizer files and a manifest (kind "merged"). The dev-box libraries
(torch, transformers, optimum) are fine here; the runtime under test never sees them.
"""

import re
import shutil
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Phi3Config, PreTrainedTokenizerFast

from edgetune.common import names
from edgetune.common.hashing import sha256_files
from edgetune.common.manifest import write_manifest
from edgetune.common.peft import PEFT_PREFIX
from tests.tiny_tokenizer import train_byte_level_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_VOCAB = 300
MODEL_VOCAB = 320  # a few ids the tokenizer never produces, as in real checkpoints


def _corpus() -> list[str]:
    """Generated English-ish text with some multi-byte characters (é, ü, €, 日本)."""
    words = [
        "the",
        "date",
        "of",
        "march",
        "april",
        "may",
        "june",
        "is",
        "a",
        "day",
        "in",
        "year",
        "when",
        "we",
        "convert",
        "to",
        "iso",
        "café",
        "über",
        "naïve",
        "€5",
        "日本",
        "hello",
        "world",
        "model",
        "token",
        "stream",
    ]
    return [" ".join(words[(i * k) % len(words)] for k in range(1, 12)) for i in range(400)]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (300 tokens) with ChatML specials and a chat template."""
    tok = train_byte_level_bpe(_corpus(), TOKENIZER_VOCAB, SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def tiny_config(family: str):
    """A 2-layer config of `family` (llama, gpt2, phi3) with hidden 64 and 4 heads (2 kv heads where it can)."""
    # a wide init gives varied greedy text (the default 0.02 repeats one token)
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, vocab_size=MODEL_VOCAB, initializer_range=0.2)
    if family == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **special,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **special)
    if family == "phi3":
        return Phi3Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            original_max_position_embeddings=128,
            **special,
        )
    raise ValueError(family)


def export_folder(hf_dir: Path, out_dir: Path) -> Path:
    """Export `hf_dir` with Optimum (with past, no post-processing) into an inference folder."""
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():  # the TorchScript exporter's tracer warnings are expected
        warnings.simplefilter("ignore")
        main_export(
            str(hf_dir), str(out_dir), task="text-generation-with-past", no_post_process=True, do_validation=False
        )
    keep = {names.MERGED_MODEL, "model.onnx_data"}
    for path in out_dir.iterdir():  # Optimum's own copies of configs and tokenizer files
        if path.name not in keep:
            path.unlink()
    for name in (names.HF_CONFIG, names.GENERATION_CONFIG, *names.TOKENIZER_FILES):
        if (hf_dir / name).exists():
            shutil.copy(hf_dir / name, out_dir / name)
    weights_sha = sha256_files(sorted(hf_dir.glob("*.safetensors")))
    write_manifest(out_dir, {"kind": "merged", "source": {"model": str(hf_dir), "weights_sha256": weights_sha}})
    return out_dir


def build_tiny(family: str, root: Path, seed: int = 0):
    """Save a random tiny `family` model and tokenizer under root/hf, export to root/onnx; return (model, onnx dir)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    hf_dir = root / "hf"
    model.save_pretrained(hf_dir)
    make_tokenizer().save_pretrained(hf_dir)
    return model, export_folder(hf_dir, root / "onnx")


def add_lora_inputs(onnx_path: Path, module: str) -> tuple[str, str]:
    """Give the Linear `module` (e.g. model.layers.0.self_attn.q_proj) a LoRA branch fed by graph inputs.

    y = x W + lora_scaling * (x A^T) B^T with A: [r, in], B: [out, r] and r symbolic, the
    way the build's rewrite names them. Returns the names of the A and B inputs.
    """
    model = onnx.load(str(onnx_path))
    graph = model.graph
    node_path = re.sub(r"/(\d+)(?=/|$)", r".\1", "/" + module.replace(".", "/"))  # /model/layers.0/self_attn/q_proj
    node = next(n for n in graph.node if n.name == node_path + "/MatMul")
    weight = next(t for t in graph.initializer if t.name == node.input[1])  # (in, out), already transposed
    d_in, d_out = weight.dims
    a, b = (f"{PEFT_PREFIX}{module}.lora_{x}.weight" for x in "AB")
    graph.input.extend(
        [
            helper.make_tensor_value_info(a, TensorProto.FLOAT, ["r", d_in]),
            helper.make_tensor_value_info(b, TensorProto.FLOAT, [d_out, "r"]),
            helper.make_tensor_value_info(names.LORA_SCALING, TensorProto.FLOAT, []),
        ]
    )
    base_out, p = node.output[0], f"/{module}/lora"
    for consumer in graph.node:
        consumer.input[:] = [p + "/out" if i == base_out else i for i in consumer.input]
    lora = [
        helper.make_node("Transpose", [a], [p + "/At"], name=p + "/TA"),
        helper.make_node("Transpose", [b], [p + "/Bt"], name=p + "/TB"),
        helper.make_node("MatMul", [node.input[0], p + "/At"], [p + "/xa"], name=p + "/MA"),  # (B, T, r)
        helper.make_node("MatMul", [p + "/xa", p + "/Bt"], [p + "/xab"], name=p + "/MB"),  # (B, T, out)
        helper.make_node("Mul", [p + "/xab", names.LORA_SCALING], [p + "/scaled"], name=p + "/S"),
        helper.make_node("Add", [base_out, p + "/scaled"], [p + "/out"], name=p + "/Add"),
    ]
    nodes = list(graph.node)
    at = nodes.index(node) + 1  # keep the node list topologically sorted
    del graph.node[:]
    graph.node.extend(nodes[:at] + lora + nodes[at:])
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return a, b
