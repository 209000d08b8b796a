"""Per-architecture facts, keyed on the Hugging Face `model_type`.

A new family is one entry: the Linear module names that LoRA may target, the default
targets, and whether its Linear layers store weights as (in, out) like GPT-2's Conv1D
(PEFT's `fan_in_fan_out`). An encoder family also names its task heads: the modules
that are trained whole and saved under PEFT's `modules_to_save`.
"""

from dataclasses import dataclass

from edgetune.common.errors import ConfigError, EdgetuneError
from edgetune.options import ALL_LINEAR


@dataclass(frozen=True)
class Architecture:
    """What the graph rewrites need to know about one model family."""

    model_type: str
    linear_names: tuple[str, ...]  # leaf names of every adaptable Linear (LM head excluded)
    default_targets: tuple[str, ...]
    fan_in_fan_out: bool = False  # weights stored (in, out): GPT-2's Conv1D
    lm_head: str = "lm_head"
    serve_qkv: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # one when fused
    serve_out: str = "self_attn.o_proj"  # the attention's output projection
    serve_qk_norms: tuple[str, ...] = ()  # norms on q and k before rotary (Qwen3, Gemma 3)
    rotary: bool = True  # rotary positions (else learned position embeddings, as GPT-2)
    heads: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (task, head modules) of an encoder family

    def head_modules(self, task: str) -> tuple[str, ...]:
        """The task head's module names (PEFT's modules_to_save); () for a causal LM."""
        return dict(self.heads).get(task, ())


def _encoder(model_type: str, linears: tuple[str, ...], defaults: tuple[str, ...], classifier=("classifier",)):
    """An encoder family: a sequence-classification head `classifier` (or the modules given),
    a token-classification head `classifier` and a question-answering head `qa_outputs`."""
    heads = (
        ("text-classification", classifier),
        ("token-classification", ("classifier",)),
        ("question-answering", ("qa_outputs",)),
    )
    return Architecture(model_type, linears, defaults, heads=heads)


_LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
_BERT_LINEARS = ("query", "key", "value", "dense")  # dense: attention output, MLP in and out, pooler

ARCHITECTURES = {
    a.model_type: a
    for a in (
        Architecture("llama", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture("qwen2", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture("mistral", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture(
            "phi3",
            ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
            ("qkv_proj",),
            serve_qkv=("self_attn.qkv_proj",),
        ),
        Architecture(
            "gpt2",
            ("c_attn", "c_proj", "c_fc"),
            ("c_attn",),
            fan_in_fan_out=True,
            serve_qkv=("attn.c_attn",),
            serve_out="attn.c_proj",
            rotary=False,
        ),
        Architecture("gemma", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture("gemma2", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture(  # Gemma 3's text models (270M, 1B)
            "gemma3_text", _LLAMA_LINEARS, ("q_proj", "v_proj"), serve_qk_norms=_QK_NORMS
        ),
        Architecture("qwen3", _LLAMA_LINEARS, ("q_proj", "v_proj"), serve_qk_norms=_QK_NORMS),
        Architecture("granite", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture("olmo", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        Architecture("stablelm", _LLAMA_LINEARS, ("q_proj", "v_proj")),
        _encoder("bert", _BERT_LINEARS, ("query", "value")),  # MiniLM too
        _encoder("roberta", _BERT_LINEARS, ("query", "value")),  # classifier = dense + out_proj
        _encoder("xlm-roberta", _BERT_LINEARS, ("query", "value")),
        _encoder("electra", (*_BERT_LINEARS, "embeddings_project"), ("query", "value")),
        _encoder(
            "distilbert",
            ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
            ("q_lin", "v_lin"),
            classifier=("pre_classifier", "classifier"),
        ),
    )
}


def get_architecture(model_type: str) -> Architecture:
    """Return the registry entry for `model_type`, or fail naming the supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise EdgetuneError(f"unsupported architecture '{model_type}' (supported: {supported})") from None


def resolve_targets(arch: Architecture, targets: str | list[str] | None) -> tuple[str, ...]:
    """Turn a `--targets` value (None, 'all-linear' or names) into leaf module names."""
    if targets is None:
        return arch.default_targets
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return arch.linear_names
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in arch.linear_names]
    if unknown or not targets:
        raise ConfigError(
            "targets",
            f"{','.join(unknown) or '(none)'} match no Linear layer of {arch.model_type} "
            f"(names: {', '.join(arch.linear_names)}, or {ALL_LINEAR})",
        )
    return tuple(dict.fromkeys(targets))
