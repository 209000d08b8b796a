"""Load the model to build from: a local HF folder, a .gguf file, or a hub id."""

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from edgetune.common.errors import EdgetuneError
from edgetune.common.hashing import sha256_files

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class Source:
    """A loaded fp32 model with its tokenizer and the identity of its weights."""

    name: str  # what the user passed
    model: PreTrainedModel | None  # None once exported (the build frees it)
    tokenizer: object
    weights_sha256: str  # over the source weight files


@dataclass(frozen=True)
class Loader:
    """How to load the model: transformers' Auto class and its extra arguments (a task head's labels)."""

    auto_class: str = "AutoModelForCausalLM"
    labels: tuple[str, ...] | None = None  # the head's labels, id order
    seed: int = 0  # a new head's random init

    def load(self, folder: Path, **kwargs) -> PreTrainedModel:
        """The fp32 model from `folder`; a head the checkpoint lacks is initialised from `seed`."""
        if self.labels:
            kwargs |= {"id2label": dict(enumerate(self.labels)), "label2id": {n: i for i, n in enumerate(self.labels)}}
        if self.auto_class != "AutoModelForCausalLM":
            torch.manual_seed(self.seed)
        return getattr(transformers, self.auto_class).from_pretrained(folder, dtype=torch.float32, **kwargs)


def load_source(name: str, loader: Loader = Loader()) -> Source:
    """Load `name` as an fp32 model in eval mode (a causal LM unless `loader` says otherwise), with its tokenizer."""
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise EdgetuneError(f"{name}: no such GGUF file")
        return _load(name, path.parent, [path], loader, gguf_file=path.name)
    if path.is_dir():
        weights = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
        if not weights:
            raise EdgetuneError(f"{name}: no model weights in this folder")
        return _load(name, path, weights, loader)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise EdgetuneError(f"{name}: not a model folder, a .gguf file, or a hub id (owner/name)")
    return _load(name, _download(name), None, loader)


def _download(repo_id: str) -> Path:
    """Fetch a hub model's files into the local cache and return the snapshot folder."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as e:  # offline, unknown repo, gated: one line either way
        raise EdgetuneError(f"{repo_id}: could not fetch from the hub ({type(e).__name__})") from None


def _load(name: str, folder: Path, weights: list[Path] | None, loader: Loader, gguf_file: str | None = None) -> Source:
    if weights is None:
        weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    hf_logging.set_verbosity_error()  # the GGUF progress bar and tokenizer notices are not ours to show
    hf_logging.disable_progress_bar()
    try:
        model = loader.load(folder, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        kind = "a causal LM" if loader.auto_class == "AutoModelForCausalLM" else f"a model for {loader.auto_class[12:]}"
        raise EdgetuneError(f"{name}: cannot load as {kind} ({str(e).splitlines()[0]})") from None
    model.hf_quantizer = None  # a GGUF load is dequantized to fp32; export treats it as a plain model
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise EdgetuneError(f"{name}: no usable tokenizer ({str(e).splitlines()[0]})") from None
    if gguf_file:
        _apply_gguf_special_tokens(tokenizer, folder / gguf_file)
    return Source(name, model.eval(), tokenizer, sha256_files(weights))


def _apply_gguf_special_tokens(tokenizer, path: Path) -> None:
    """Take special tokens and BOS-adding from the GGUF metadata itself.

    transformers 4.57 loads SmolLM2's GGUF tokenizer with eos = <|im_start|> and BOS
    prepended, while the file says eos = <|im_end|> and add_bos_token = false.
    """
    import gguf

    fields = gguf.GGUFReader(path).fields

    def value(key: str):
        field = fields.get(f"tokenizer.ggml.{key}")
        return None if field is None else field.contents()

    for attr, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ):
        token_id = value(key)
        if token_id is not None:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = value("add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)  # also rebuilds the post-processor
