"""Build without the weights in memory: a model skeleton to export, the real tensors read one at a time.

The exported graph does not depend on the weights' values, so the model the exporter
traces is a skeleton. Its vectors (norms, biases) and buffers are real; every matrix is a
placeholder: an (out, in) view of `out` NaNs with strides (1, 0), which costs out·4
bytes. The exporter's constant folding turns each matrix into a view of its placeholder
(a Linear's weight transposed, an embedding table as it is), so every exported constant
names its source tensor and its layout, and `Placeholders.materialize` reads that tensor
from the source's safetensors or GGUF file, as float32, laid out as the export wants it.
A constant the exporter computed from a placeholder (not a view of it) carries its NaNs
and is refused rather than written with wrong values. Measurements: docs/design.md,
"Export: weights streamed from the source".
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.integrations.accelerate import init_empty_weights

from edgetune.common.errors import EdgetuneError, InternalError

SAFETENSORS_INDEX = "model.safetensors.index.json"


class SafetensorsTensors:
    """The tensors of a folder's safetensors files (one file or the shards of an index), read one at a time."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._file_of: dict[str, Path] = {}
        for path in files:
            with safe_open(path, framework="pt") as f:
                self._file_of.update(dict.fromkeys(f.keys(), path))

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` as float32 (bf16/fp16 widened exactly, as `from_pretrained(dtype=float32)` does)."""
        from safetensors import safe_open

        with safe_open(self._file_of[name], framework="pt") as f:
            return f.get_tensor(name).to(torch.float32)


class GGUFTensors:
    """The tensors of a GGUF file under their Hugging Face names, dequantized one at a time.

    The same steps as transformers' GGUF loader (`load_gguf_checkpoint`), per tensor: gguf's
    dequantization to float32, then the family's tensor processor (Llama's q/k row order,
    Gemma's norm offset, GPT-2's transposes).
    """

    def __init__(self, path: Path, model: PreTrainedModel):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
            read_field,
        )

        self._reader = GGUFReader(path)
        parsed = load_gguf_checkpoint(path)  # metadata only: the config the processors read
        architecture = read_field(self._reader, "general.architecture")[0]
        self._processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed.get("config", {}))
        self._hf_name = get_gguf_hf_weights_map(model)
        self._tensor_of = {}
        for tensor in self._reader.tensors:
            hf_name = self._hf_name.get(tensor.name)
            if architecture == "gpt2" and tensor.name == "output.weight":  # its processor renames it
                hf_name = "lm_head.weight"
            if hf_name is not None:
                self._tensor_of[hf_name] = tensor

    def __contains__(self, name: str) -> bool:
        return name in self._tensor_of

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` dequantized to float32 and processed as transformers' GGUF loader does."""
        from gguf import dequantize

        tensor = self._tensor_of[name]
        parsed: dict = {"tensors": {}}
        result = self._processor.process(
            weights=dequantize(tensor.data, tensor.tensor_type),
            name=tensor.name,
            tensor_key_mapping=self._hf_name,
            parsed_parameters=parsed,
        )
        weights = parsed["tensors"].get(name) if result.name is None else torch.from_numpy(np.copy(result.weights))
        return weights.to(torch.float32)


@dataclass
class Placeholders:
    """The skeleton's matrices: which placeholder stands for which source tensor, and how to read it."""

    tensors: object  # SafetensorsTensors or GGUFTensors
    names: dict[int, str] = field(default_factory=dict)  # placeholder storage address -> parameter name
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def source_of(self, value: torch.Tensor) -> str | None:
        """The parameter an exported constant is a view of, or None for a real constant."""
        return self.names.get(value.untyped_storage().data_ptr())

    def materialize(self, name: str, value: torch.Tensor) -> np.ndarray:
        """The real values of exported constant `name`, a view of a placeholder: its source, laid out the same."""
        source = self.source_of(value)
        out, n_in = self.shapes[source]
        shape, strides = tuple(value.shape), value.stride()
        if value.storage_offset() == 0 and shape == (out, n_in) and (strides == (1, 0) or 1 in shape):
            real = self.tensors.read(source)
        elif value.storage_offset() == 0 and shape == (n_in, out) and (strides == (0, 1) or 1 in shape):
            real = self.tensors.read(source).T
        else:
            raise InternalError(
                f"exported constant {name} is a view of {source} ({shape}, strides {strides}) "
                "that the streaming export cannot lay out (only as it is or transposed)"
            )
        if tuple(real.shape) != shape:
            raise EdgetuneError(f"{source}: the weights file holds a {tuple(real.shape)} tensor, the config {shape}")
        return real.contiguous().numpy()

    def check_real(self, name: str, value: torch.Tensor) -> None:
        """Refuse an exported constant the exporter computed from a placeholder: its NaNs say so."""
        if value.is_floating_point() and bool(torch.isnan(value).any()):
            raise InternalError(
                f"exported constant {name} was computed from a streamed weight, not viewed "
                "(the streaming export cannot reproduce it)"
            )


def safetensors_files(folder: Path) -> list[Path] | None:
    """The folder's safetensors weights (the shards its index names, or its single file), or None."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise EdgetuneError(f"{index}: names shards that are not in the folder ({', '.join(missing)})")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    return files or None


def skeleton(config: PretrainedConfig, load_tensors) -> tuple[PreTrainedModel, Placeholders]:
    """The float32 causal LM of `config` in eval mode, its matrices placeholders, its vectors read.

    `load_tensors(model)` returns the tensor source (it may need the model's names).
    """
    with init_empty_weights(include_buffers=False):  # parameters on the meta device, buffers real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # tied parameters are one, listed once
    tensors = load_tensors(model)
    placeholders = Placeholders(tensors)
    for name, param in list(model.named_parameters()):  # tied parameters once
        if name not in tensors:
            raise EdgetuneError(f"the weights hold no tensor '{name}', which the {config.model_type} model needs")
        module_name, _, leaf = name.rpartition(".")
        if param.dim() == 2:
            out, n_in = param.shape
            base = torch.full((out,), float("nan"))
            value = base.as_strided((out, n_in), (1, 0))  # (out, in): out·4 bytes
            placeholders.names[base.untyped_storage().data_ptr()] = name
            placeholders.shapes[name] = (out, n_in)
        else:
            value = tensors.read(name)
            if tuple(value.shape) != tuple(param.shape):
                raise EdgetuneError(
                    f"{name}: the weights file holds a {tuple(value.shape)} tensor, the config {tuple(param.shape)}"
                )
        setattr(model.get_submodule(module_name), leaf, torch.nn.Parameter(value, requires_grad=False))
    _load_persistent_buffers(model, tensors)
    model.tie_weights()
    model.config.dtype = torch.float32  # as `from_pretrained(dtype=float32)` records it in config.json
    return model.eval(), placeholders


def _load_persistent_buffers(model: PreTrainedModel, tensors) -> None:
    """Buffers saved with the weights take the files' values, as `from_pretrained` gives them."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for name in model.state_dict():
        if name not in parameters and name in tensors:
            module_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_name)
            setattr(module, leaf, tensors.read(name).to(getattr(module, leaf).dtype))
