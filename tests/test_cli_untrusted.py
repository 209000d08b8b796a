"""Each traceback a hostile or careless user found is now one line on stderr with a non-zero exit."""

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest

from edgetune.common import names
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import save_adapter
from tests.parity import random_adapter
from tests.tamper import copy_bundle, reseal
from tests.test_cli import _one_line_error, edgetune
from tests.tiny_models import sample_text


def _edited(tiny_bundle, tmp_path, name, content):
    bundle = copy_bundle(tiny_bundle("llama"), tmp_path / "bundle")
    (bundle / name).write_text(content) if isinstance(content, str) else (bundle / name).write_bytes(content)
    reseal(bundle)
    return bundle


@contextmanager
def read_only_folder(path):
    """A folder that even root cannot write into (ext4's immutable attribute)."""
    path.mkdir()
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_prompt_that_is_not_utf8(tiny_bundle):
    p = subprocess.run(
        [sys.executable, "-m", "edgetune.cli", "generate", str(tiny_bundle("llama")).encode(), b"--prompt", b"a\xffb"],
        capture_output=True,
        text=True,
    )
    _one_line_error(p.returncode, p.stderr, "the prompt is not valid UTF-8")


@pytest.mark.parametrize(
    "flags, code, needle",
    [
        (["--temperature", "1e-320", "--seed", "1"], 0, ""),  # as good as greedy, no overflow
        (["--temperature", "inf"], 1, "temperature must be a finite number"),
        (["--seed", "-1", "--temperature", "0.7"], 1, "seed must be a whole number >= 0, got -1"),
        (["--truncate", "--max-new-tokens", "256"], 1, "leaves no room for the prompt in the model's context of 256"),
    ],
)
def test_sampling_flags(flags, code, needle, tiny_bundle):
    args = ["generate", tiny_bundle("llama"), "--prompt", "the date", "--max-new-tokens", "4", *flags]
    got, out, err = edgetune(*args)
    if code:
        _one_line_error(got, err, needle)
    else:
        assert got == 0 and out.strip(), err


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("tokenizer.json", b"\x00garbage{", "tokenizer.json: not a readable tokenizer"),
        ("tokenizer_config.json", "{not json", "tokenizer_config.json: not valid JSON"),
        ("config.json", json.dumps({"max_position_embeddings": "256"}), "field max_position_embeddings must be"),
        ("config.json", json.dumps({"max_position_embeddings": 256, "eos_token_id": "x"}), "field eos_token_id"),
        ("generation_config.json", "[]", "generation_config.json: not a JSON object"),
    ],
)
def test_garbage_in_bundle_files(name, content, needle, tiny_bundle, tmp_path):
    bundle = _edited(tiny_bundle, tmp_path, name, content)
    code, _, err = edgetune("generate", bundle, "--prompt", "the", "--max-new-tokens", "2")
    _one_line_error(code, err, needle)


def test_read_only_outputs(tiny_bundle, tiny_model_dir, tmp_path):
    bundle = tiny_bundle("llama")
    manifest = read_manifest(bundle)
    save_adapter(
        tmp_path / "adapter", random_adapter(bundle), manifest["adapter_config"], manifest["source"]["weights_sha256"]
    )
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_text(8)))
    with read_only_folder(tmp_path / "ro") as ro:
        code, _, err = edgetune("merge", bundle, "--adapter", tmp_path / "adapter", "-o", ro / "merged")
        _one_line_error(code, err, f"{ro / 'merged'}: cannot write: Operation not permitted")
        code, _, err = edgetune("train", bundle, "--data", data, "-o", ro / "run", "--steps", "1", "--no-progress")
        _one_line_error(code, err, "cannot create the run lock (Operation not permitted)")
        code, _, err = edgetune("build", tiny_model_dir("llama"), "-o", ro / "bundle")
        _one_line_error(code, err, f"{ro / 'bundle'}: cannot write: Operation not permitted")


def test_wrong_adapter_shapes_and_pickles_via_the_cli(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    (tmp_path / "pickled").mkdir()
    manifest = read_manifest(bundle)
    (tmp_path / "pickled" / names.ADAPTER_CONFIG).write_text(json.dumps(manifest["adapter_config"]))
    (tmp_path / "pickled" / names.ADAPTER_WEIGHTS).write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # pickle's header
    code, _, err = edgetune("merge", bundle, "--adapter", tmp_path / "pickled", "-o", tmp_path / "merged")
    _one_line_error(code, err, "not a readable safetensors file")
    code, _, err = edgetune("generate", bundle, "--adapter", tmp_path / "pickled", "--prompt", "x")
    _one_line_error(code, err, "not a readable safetensors file")
