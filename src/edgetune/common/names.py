"""File names inside a bundle, a run folder and an adapter folder, in one place."""

# bundle/
MANIFEST = "manifest.json"
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
INFERENCE_MODEL = "inference.onnx"       # with-past graph, adapter tensors as inputs
MERGED_MODEL = "model.onnx"              # a merged folder: Optimum's file name, no adapter inputs
BASE_WEIGHTS = "base_weights.bin"        # frozen weights, stored once, shared by every graph
HF_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# adapter/ (PEFT's names)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# graph tensor names shared by build and runtime
LABELS = "labels"
LOSS = "loss"
LORA_SCALING = "lora_scaling"            # scalar input of the inference graph
PEFT_PREFIX = "base_model.model."        # PEFT key prefix in front of the HF module path
