"""Names shared by the build and the runtime: files of a bundle, a run and an adapter, and graph tensors."""

# bundle/
MANIFEST = "manifest.json"
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
INFERENCE_MODEL = "inference.onnx"  # with-past graph, adapter tensors as inputs
MERGED_MODEL = "model.onnx"  # a merged folder: Optimum's file name, no adapter inputs
BASE_WEIGHTS = "base_weights.bin"  # frozen weights, stored once, shared by every graph
HF_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SIGNATURE = "edgetune.sig"  # a signed bundle's or adapter's Ed25519 signature (common.trust)
VERIFY_CACHE = ".edgetune-verified.json"  # (size, mtime, ctime, inode) of files already hashed (common.verify_cache)

# runs/NAME/ (a training run's folder)
ADAPTER_DIR = "adapter"  # the final adapter, PEFT format
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
CHECKPOINTS = "checkpoints"  # checkpoints/step-NNNNNN/{checkpoint, state.json}
STATE = "state.json"

# adapter/ (PEFT's names)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_DELTA = "base_delta.safetensors"  # edgetune's, beside PEFT's files: deltas on the base weights (FedEx-LoRA)

# graph tensor names shared by build and runtime (adapter tensor names: see common.peft)
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)
PAST = "past_key_values."  # with-past graphs: past_key_values.N.key / .value in
PRESENT = "present."  # ... and present.N.key / .value out (Optimum's names)
LOGITS = "logits"  # the exported graph's output, written by the LM head
LABELS = "labels"  # training graphs: shifted targets, -100 where no loss is taken
LOSS = "loss"  # training graphs' only output
LORA_SCALING = "lora_scaling"  # scalar input of the inference graph (0: adapter off)
# encoder tasks (Optimum's names, and the HF model's loss arguments)
TOKEN_TYPE_IDS = "token_type_ids"
START_LOGITS = "start_logits"  # question answering: (B, S) each
END_LOGITS = "end_logits"
START_POSITIONS = "start_positions"  # question answering's labels: (B,) token index each
END_POSITIONS = "end_positions"
CLASS_WEIGHTS = "class_weights"  # classification training graphs: (C,) weight of each label in the loss
