"""The adapter methods as variants of one protocol, as PEFT's `LoraVariant` does.

The build pipeline knows no method by name: it asks the bundle's variant what the
adapter's initial values are, how to rewrite a graph (training or inference) and its LM
head, and whether layers are checkpointed by default. A variant that reads weight values
reads them through `WeightFiles`, one tensor at a time.

    lora   y = x·W + s·x·Aᵀ·Bᵀ over the exported float weights
    dora   the LoRA branch plus PEFT's magnitude vector m (`rewrites.dora`)
    qlora  LoRA over a base stored int8 or int4 (`rewrites.quant`), layers checkpointed

int8 compute (`rewrites.int8_compute`) is a variant of lora and of qlora-int8: the same
adapter over an int8 per-channel base whose Linears train as int8 GEMMs.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgetune.builder.graph import LinearSite
from edgetune.builder.rewrites import int8_compute, lora
from edgetune.builder.rewrites.dora import add_dora, untranspose_gemms, weight_norms
from edgetune.builder.rewrites.quant.base import quantize_frozen_base
from edgetune.builder.rewrites.quant.lm_head import quantize_lm_head
from edgetune.builder.rewrites.recompute.int8_gradients import int8_backward
from edgetune.builder.rewrites.recompute.weights import recompute_dequantized_weights
from edgetune.builder.weights import WeightFiles
from edgetune.common.errors import AdapterError
from edgetune.options import BuildConfig, LoraSpec


@dataclass(frozen=True)
class LoraVariant:
    """Plain LoRA; the base for the others."""

    name: str = "lora"
    use_dora: bool = False
    checkpointing_by_default: bool = False
    quant: str | None = None  # the base's storage: None (float), int8 or int4
    compute: str = "fp32"  # the frozen Linears' arithmetic in training

    def initial_weights(
        self, graph: onnx.ModelProto, sites: list[LinearSite], spec: LoraSpec, seed: int, files: WeightFiles
    ) -> dict[str, np.ndarray]:
        """PEFT's initial adapter in graph layout: A kaiming-uniform, B = 0."""
        return lora.init_adapter(sites, spec, seed)

    def rewrite(
        self,
        graph: onnx.ModelProto,
        sites: list[LinearSite],
        spec: LoraSpec,
        weights: dict | None,
        training: bool,
        files: WeightFiles,
    ) -> list[str]:
        """Add the adapter to one graph; return the adapter tensor names."""
        return lora.add_lora(graph, sites, spec, weights, training)

    def rewrite_head(self, graph: onnx.ModelProto, training: bool, files: WeightFiles) -> dict[str, tuple[str, int]]:
        """Rewrite the LM head (after the loss, in a training graph); return tied slices of the embedding."""
        return {}

    def rewrite_backward(self, training_model: onnx.ModelProto) -> None:
        """Rewrite the training model once ORT has added its gradient nodes."""

    def manifest_fields(self) -> dict:
        """What the bundle's manifest says of this variant beyond method and quantization."""
        return {}


@dataclass(frozen=True)
class DoraVariant(LoraVariant):
    """DoRA: the training rewrite reads the adapted weights (m starts at their row norms)."""

    name: str = "dora"
    use_dora: bool = True

    def initial_weights(self, graph, sites, spec, seed, files):
        """LoRA's initial A and B, and m = ‖W + s·B·A‖ = ‖W‖ per output row (each W read in turn)."""
        untranspose_gemms(graph, sites, files)
        weights = super().initial_weights(graph, sites, spec, seed, files)
        return weights | weight_norms(graph, sites, spec.scaling, weights, files)

    def rewrite(self, graph, sites, spec, weights, training, files):
        """The DoRA branch on every site (a Gemm reading W (out, in) then reads Wᵀ)."""
        untranspose_gemms(graph, sites, files)
        return add_dora(graph, sites, spec, weights, training)


@dataclass(frozen=True)
class QLoraVariant(LoraVariant):
    """QLoRA: every frozen weight quantized (`quant`, `block_size` for int4), LoRA on top."""

    name: str = "qlora"
    checkpointing_by_default: bool = True
    quant: str | None = "int8"
    block_size: int = 32

    def rewrite(self, graph, sites, spec, weights, training, files):
        """Quantize the base, one weight at a time, then add the LoRA branches."""
        quantize_frozen_base(graph, self.quant, self.block_size, training, files)
        return super().rewrite(graph, sites, spec, weights, training, files)

    def rewrite_head(self, graph, training, files):
        """The LM head int8 in vocabulary chunks (with a chunked loss in training)."""
        return quantize_lm_head(graph, training, files)

    def rewrite_backward(self, training_model):
        """Float weights rebuilt per use, not kept from forward to backward (`recompute.weights`)."""
        recompute_dequantized_weights(training_model)


class Int8Compute:
    """The frozen Linears train as int8 GEMMs (`rewrites.int8_compute`), over the variant it is mixed into.

    The rewrite stores every Linear int8 first (QLoRA-int8's already are); the training
    model's x·W and dY·Wᵀ become int8 GEMMs once ORT has built the gradient graph, before
    the variant's own backward rewrite (which then finds only the LM head to dequantize).
    """

    def rewrite(self, graph, sites, spec, weights, training, files):
        """Every float Linear but the LM head stored int8 per output channel, then the variant's rewrite."""
        int8_compute.quantize_linears(graph, training, files)
        return super().rewrite(graph, sites, spec, weights, training, files)

    def rewrite_backward(self, training_model):
        """x·W and dY·Wᵀ of every int8 Linear as int8 GEMMs, then the variant's backward rewrite."""
        int8_compute.int8_forward(training_model)
        int8_backward(training_model)
        super().rewrite_backward(training_model)

    def manifest_fields(self):
        """The compute type and its number formats."""
        return {"compute": int8_compute.MANIFEST}


@dataclass(frozen=True)
class Int8LoraVariant(Int8Compute, LoraVariant):
    """LoRA with int8 compute."""

    compute: str = "int8"


@dataclass(frozen=True)
class Int8QLoraVariant(Int8Compute, QLoraVariant):
    """QLoRA-int8 with int8 compute."""

    compute: str = "int8"


def variant_for(config: BuildConfig, peft_config: dict | None = None) -> LoraVariant:
    """The variant a build config asks for; an init adapter's use_dora may turn lora into dora."""
    method = config.method
    if peft_config is not None:
        method = _method_for_adapter(method, peft_config, config.init_adapter)
    if method == "dora" and config.compute != "fp32":
        raise AdapterError(f"{config.init_adapter}: a DoRA adapter cannot start a bundle with {config.compute} compute")
    int8 = config.compute == "int8"
    if method == "qlora":
        return (Int8QLoraVariant if int8 else QLoraVariant)(quant=config.quant, block_size=config.block_size)
    if method == "dora":
        return DoraVariant()
    return Int8LoraVariant() if int8 else LoraVariant()


def _method_for_adapter(method: str, peft_config: dict, folder: Path) -> str:
    """A DoRA adapter makes a DoRA bundle; a LoRA one a LoRA or QLoRA bundle."""
    dora = bool(peft_config.get("use_dora"))
    if dora and method == "lora":
        return "dora"
    if dora and method == "qlora":
        raise AdapterError(
            f"{folder}: a DoRA adapter cannot start a qlora bundle (DoRA over quantized weights is not supported)"
        )
    if method == "dora" and not dora:
        raise AdapterError(f"{folder}: method=dora needs a DoRA adapter (use_dora is false in its adapter_config.json)")
    return method
