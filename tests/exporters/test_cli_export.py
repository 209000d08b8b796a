"""`edgetune export` and `edgetune inspect` on exported files, from the command line."""

import json
import subprocess
import sys

from edgetune.common.bundle import sign_manifest
from edgetune.common.peft import sign_adapter
from edgetune.common.trust import keygen
from edgetune.options import EXPORT_FORMATS
from tests.exporters.conftest import write_random_adapter
from tests.tamper import copy_bundle
from tests.test_cli import _one_line_error, edgetune


def test_export_each_format_and_inspect_it(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    write_random_adapter(bundle, tmp_path / "adapter")
    outputs = {"gguf": "x.gguf", "onnx-adapter": "x.onnx_adapter", "peft": "peft", "genai": "genai"}
    for fmt, out in outputs.items():
        code, stdout, err = edgetune(
            "export", bundle, "--adapter", tmp_path / "adapter", "--format", fmt, "-o", tmp_path / out
        )
        assert code == 0, err
        assert f"as {fmt} to {tmp_path / out}" in stdout
    code, stdout, err = edgetune("inspect", tmp_path / "x.gguf")
    assert code == 0, err
    info = json.loads(stdout)
    assert (info["type"], info["adapter_type"], info["architecture"], info["rank"]) == ("adapter", "lora", "llama", 8)
    assert info["base_model"] == str(json.loads((bundle / "manifest.json").read_text())["source"]["model"])
    code, stdout, err = edgetune("inspect", tmp_path / "x.onnx_adapter")
    info = json.loads(stdout)
    assert info["format"] == "onnx-adapter" and info["parameters"] == 28 and info["rank"] == 8
    code, stdout, err = edgetune("inspect", tmp_path / "genai")
    assert code == 0 and json.loads(stdout)["kind"] == "genai", err
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_export_bad_input_is_one_line(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    code, _, err = edgetune("export", bundle, "--format", "gguf", "-o", tmp_path / "x.gguf")
    _one_line_error(code, err, "--format gguf writes an adapter: give --adapter DIR")
    code, _, err = edgetune("export", bundle, "--adapter", tmp_path / "nope", "--format", "gguf", "-o", tmp_path / "x")
    _one_line_error(code, err, "nope: no such adapter folder")
    other = tiny_bundle("qwen2")
    write_random_adapter(other, tmp_path / "qwen")
    code, _, err = edgetune(
        "export", bundle, "--adapter", tmp_path / "qwen", "--format", "onnx-adapter", "-o", tmp_path / "x"
    )
    _one_line_error(code, err, "trained on a different base model")
    (tmp_path / "junk.bin").write_bytes(b"not an adapter at all")
    code, _, err = edgetune("inspect", tmp_path / "junk.bin")
    _one_line_error(code, err, "junk.bin: neither a bundle folder, a GGUF file nor an .onnx_adapter file")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    code, _, err = edgetune("inspect", tmp_path / "bad.gguf")
    _one_line_error(code, err, "bad.gguf: not a readable GGUF file")
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".x*"))


def test_every_format_refuses_an_encoder_bundle(encoder_bundle, tmp_path):
    """An encoder's task head lives in its adapter and no target runtime serves it: one line, nothing written."""
    bundle = encoder_bundle("bert", "text-classification")
    for fmt in EXPORT_FORMATS:
        code, _, err = edgetune("export", bundle, "--adapter", tmp_path / "a", "--format", fmt, "-o", tmp_path / "x")
        _one_line_error(code, err, "export supports causal-lm bundles, not text-classification")
    assert list(tmp_path.iterdir()) == []


def test_export_with_trust_needs_a_signed_bundle_and_adapter(tiny_bundle, tmp_path):
    """--trust PUBFILE: an unsigned bundle, then an unsigned adapter, is refused in one line; signed, both export."""
    bundle = copy_bundle(tiny_bundle("llama"), tmp_path / "bundle")
    keygen(tmp_path / "key")
    write_random_adapter(bundle, tmp_path / "adapter")
    out = tmp_path / "x.onnx_adapter"
    args = ["export", bundle, "--adapter", tmp_path / "adapter", "--format", "onnx-adapter", "-o", out]
    args += ["--trust", tmp_path / "key.pub"]
    code, _, err = edgetune(*args)
    _one_line_error(code, err, f"{bundle}: not signed, and trusted keys are configured")
    sign_manifest(bundle, tmp_path / "key")
    code, _, err = edgetune(*args)
    _one_line_error(code, err, f"{tmp_path / 'adapter'}: not signed, and trusted keys are configured")
    assert not out.exists()
    sign_adapter(tmp_path / "adapter", tmp_path / "key")
    code, _, err = edgetune(*args)
    assert code == 0 and out.is_file(), err


def test_gguf_without_the_export_extra_names_it(tiny_bundle, tmp_path):
    """A device install without the `export` extra: one line naming it (gguf hidden as if not installed)."""
    bundle = tiny_bundle("llama")
    write_random_adapter(bundle, tmp_path / "adapter")
    code = "import sys; sys.modules['gguf'] = None\nfrom edgetune.cli import main\nsys.exit(main())"
    args = ["export", bundle, "--adapter", tmp_path / "adapter", "--format", "gguf", "-o", tmp_path / "x.gguf"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=False)
    _one_line_error(proc.returncode, proc.stderr, "needs the 'gguf' package: pip install \"edgetune[export]\"")
    assert not (tmp_path / "x.gguf").exists()
