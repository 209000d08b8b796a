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
GENAI_CONFIG = "genai_config.json"  # an onnxruntime-genai folder (`edgetune export --format genai`), beside model.onnx

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

# the serving graph (serve.onnx): GroupQueryAttention inputs and the adapter bank's row index
SERVE_MODEL = "serve.onnx"
SERVE_WEIGHTS = "serve_weights.bin"  # the serving graph's own tensors (quantized weights, rotary tables)
SEQLENS_K = "seqlens_k"  # (B,) int32: each row's length after this run, minus one
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # () int32: the longest row's length after this run
ADAPTER_INDEX = "adapter_index"  # (B,) int64: each row's slot in the adapter bank (0: no adapter)
PREFIX_KEY = "prefix_key."  # (B, P, kv_heads·head_dim): a continued prompt's cached keys, per layer N
PREFIX_VALUE = "prefix_value."  # ... and values (P = 0 when decoding or starting a prompt)
PREFIX_QUERY = "prefix_query"  # (B, P, heads·head_dim) zeros: GQA needs as many queries as keys
PREFIX_LENGTH = "prefix_length"  # (1,) int64: P, where the chunk's own outputs start
# encoder tasks (Optimum's names, and the HF model's loss arguments)
TOKEN_TYPE_IDS = "token_type_ids"
START_LOGITS = "start_logits"  # question answering: (B, S) each
END_LOGITS = "end_logits"
START_POSITIONS = "start_positions"  # question answering's labels: (B,) token index each
END_POSITIONS = "end_positions"
CLASS_WEIGHTS = "class_weights"  # classification training graphs: (C,) weight of each label in the loss
