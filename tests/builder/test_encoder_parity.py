"""Encoder bundles against PyTorch + PEFT: logits, and one AdamW step with the task head trained.

For every family and task, an adapter with random LoRA tensors and a perturbed head is
saved in PEFT's format; `PeftModel.from_pretrained` on `AutoModelFor<Task>` must give the
inference graph's logits, and one AdamW step on the training graph must give PEFT's loss
and updated tensors (LoRA and head).
"""

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from edgetune.common.manifest import read_manifest
from edgetune.common.names import CLASS_WEIGHTS, END_POSITIONS, LABELS, LORA_SCALING, START_POSITIONS
from edgetune.common.peft import config_scaling, save_adapter, to_graph_layout
from tests.parity import checkpoint_adapter, ort_training
from tests.tiny_encoders import ENCODERS, VOCAB

TASKS = ("text-classification", "token-classification", "question-answering")
AUTO = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}


def random_encoder_adapter(bundle, seed: int = 1) -> dict[str, np.ndarray]:
    """Random LoRA A and B, and the initial head moved by noise, in PEFT layout."""
    rng = np.random.default_rng(seed)
    head = read_manifest(bundle)["head_tensors"]
    out = {}
    for key, value in checkpoint_adapter(bundle).items():
        moved = key in head or key.endswith("lora_magnitude_vector")  # from its initial value
        noise = (rng.standard_normal(value.shape) * (0.05 if moved else 0.2)).astype(np.float32)
        out[key] = value + noise if moved else noise
    return out


def encoder_batch(task: str, num_labels: int, seed: int = 0, batch: int = 3, seq: int = 9) -> dict[str, np.ndarray]:
    """Token ids (3 + random, last row right-padded) and the task's labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[-1, -3:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if task == "text-classification":
        feeds[LABELS] = rng.integers(0, num_labels, batch).astype(np.int64)
    elif task == "token-classification":
        labels = rng.integers(0, num_labels, (batch, seq)).astype(np.int64)
        labels[:, 0] = -100
        labels[mask == 0] = -100
        feeds[LABELS] = labels
    else:
        feeds[START_POSITIONS] = rng.integers(0, seq - 3, batch).astype(np.int64)
        feeds[END_POSITIONS] = rng.integers(0, seq - 3, batch).astype(np.int64)
    return feeds


def peft_encoder(model_dir, bundle, adapter_dir, trainable: bool = False):
    """AutoModelFor<Task> from the source folder with the adapter loaded by PEFT."""
    import transformers

    manifest = read_manifest(bundle)
    labels = manifest.get("labels") or None
    kwargs = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    base = getattr(transformers, AUTO[manifest["task"]]).from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable).eval()


def _torch_inputs(model, feeds: dict) -> dict:
    names = set(model.base_model.model.forward.__code__.co_varnames)
    return {k: torch.from_numpy(v) for k, v in feeds.items() if k in names}


@pytest.mark.parametrize("arch", ENCODERS)
@pytest.mark.parametrize("task", TASKS)
def test_logits_and_one_adamw_step_match_peft(arch, task, encoder_bundle, encoder_model_dir, tmp_path):
    check_against_peft(encoder_bundle(arch, task), encoder_model_dir(arch), task, tmp_path)


@pytest.mark.parametrize("task", TASKS)
def test_dora_matches_peft(task, encoder_bundle, encoder_model_dir, tmp_path):
    check_against_peft(encoder_bundle("bert", task, method="dora"), encoder_model_dir("bert"), task, tmp_path)


@pytest.mark.parametrize("quant, tolerance", [("int8", 0.02), ("int4", 0.25)])
def test_qlora_keeps_the_head_float_and_stays_near_peft(quant, tolerance, encoder_bundle, encoder_model_dir, tmp_path):
    """The frozen base is quantized, so logits and loss are near PEFT's float ones (the tolerances of
    the causal-LM QLoRA tests); the head stays float and trainable, and one step moves it as PEFT does."""
    bundle = encoder_bundle("bert", "text-classification", method="qlora", quant=quant)
    check_against_peft(bundle, encoder_model_dir("bert"), "text-classification", tmp_path, tolerance=tolerance)


@pytest.mark.parametrize("arch", ENCODERS)
def test_int8_compute_stays_near_peft(arch, encoder_bundle, encoder_model_dir, tmp_path):
    """The frozen Linears run as int8 GEMMs in training (`--compute int8`): loss near PEFT's float one
    (QLoRA-int8's tolerance), one AdamW step moves every trained tensor as PEFT's does."""
    bundle = encoder_bundle(arch, "text-classification", compute="int8")
    assert read_manifest(bundle)["compute"]["type"] == "int8"
    check_against_peft(bundle, encoder_model_dir(arch), "text-classification", tmp_path, tolerance=0.02)


def check_against_peft(bundle, model_dir, task, tmp_path, tolerance: float = 1e-4):
    """Logits of the inference graph and one AdamW step of the training graph against PEFT's."""
    import onnxruntime as ort

    manifest = read_manifest(bundle)
    adapter = random_encoder_adapter(bundle)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    num_labels = len(manifest.get("labels") or [0, 0])
    feeds = encoder_batch(task, num_labels)
    reference = peft_encoder(model_dir, bundle, tmp_path / "adapter")

    # logits of the inference graph, fed the adapter
    sess = ort.InferenceSession(str(bundle / "inference.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    run = {k: v for k, v in feeds.items() if k in inputs}
    run |= to_graph_layout(adapter) | {LORA_SCALING: np.array(config_scaling(manifest["adapter_config"]), np.float32)}
    outputs = [o.name for o in sess.get_outputs()]
    ours = dict(zip(outputs, sess.run(outputs, run)))
    with torch.no_grad():
        theirs = reference(**_torch_inputs(reference, feeds))
    for name in outputs:
        np.testing.assert_allclose(ours[name], getattr(theirs, name).numpy(), atol=tolerance, rtol=0)

    # one AdamW step: loss, then every trained tensor (LoRA and head)
    lr = 1e-2
    state, module, optimizer = ort_training(bundle, adapter, lr)
    train_feeds = feeds | ({CLASS_WEIGHTS: np.ones(num_labels, np.float32)} if task != "question-answering" else {})
    loss = float(module(*(train_feeds[name] for name in module.input_names()))[0])
    grads = {key: state.parameters[key].grad.copy() for key in to_graph_layout(adapter)}
    before = to_graph_layout(adapter)
    optimizer.step()
    trained = peft_encoder(model_dir, bundle, tmp_path / "adapter", trainable=True)
    params = [p for p in trained.parameters() if p.requires_grad]
    torch_opt = torch.optim.AdamW(params, lr=lr, eps=1e-8, weight_decay=0.0)
    torch_loss = trained(**_torch_inputs(trained, feeds)).loss
    torch_loss.backward()
    torch_opt.step()
    assert abs(loss - torch_loss.item()) <= tolerance
    updated = {k: v.detach().numpy() for k, v in get_peft_model_state_dict(trained).items()}
    assert set(updated) == set(adapter)
    for key, value in to_graph_layout(updated).items():
        if key.endswith("qa_outputs.bias"):
            # Its gradient is 0 (a constant added to every position's start or end logit leaves
            # their softmax unchanged), so AdamW's first step moves it by ±lr after the sign
            # of rounding noise on either side: compare the gradient itself.
            assert np.abs(grads[key]).max() < 1e-5, grads[key]
            continue
        if tolerance > 1e-4:  # quantized: AdamW's first step moves by ±lr after the gradient's sign
            agree = np.sign(state.parameters[key].data - before[key]) == np.sign(value - before[key])
            assert agree.mean() > 0.9, key
            continue
        np.testing.assert_allclose(state.parameters[key].data, value, atol=1e-4, rtol=0, err_msg=key)
        assert not np.allclose(value, before[key]), key  # it moved


def test_gradient_checkpointing_recomputes_encoder_layers(encoder_bundle, encoder_model_dir, tmp_path):
    import onnx

    bundle = encoder_bundle("bert", "token-classification", gradient_checkpointing=True)
    nodes = onnx.load(bundle / "training_model.onnx", load_external_data=False).graph.node
    assert any(n.name.endswith("/checkpointed") and "/layer.1/" in n.name for n in nodes)
    check_against_peft(bundle, encoder_model_dir("bert"), "token-classification", tmp_path)
