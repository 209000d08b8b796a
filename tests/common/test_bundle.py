"""open_bundle on hostile bundles: paths that leave the folder, symlinks, devices, edited and unlisted files."""

import json
import os

import onnx
import pytest

from edgetune.common import bundle as bundle_module
from edgetune.common import names
from edgetune.common.bundle import open_bundle
from edgetune.common.errors import BundleError
from edgetune.runtime.generate import Generator
from tests.tamper import copy_bundle, flip_byte, reseal


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    """A private copy of the tiny llama bundle, and a 'secret' file beside it."""
    (tmp_path / "secret.bin").write_bytes(os.urandom(1 << 16))
    return copy_bundle(tiny_bundle("llama"), tmp_path / "bundle")


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _point_external_data(folder, location: str) -> str:
    """Make the inference graph read its first external tensor from `location`; returns the tensor's name."""
    path = folder / names.INFERENCE_MODEL
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, path)
    reseal(folder)  # a careless or hostile user recomputes the manifest
    return tensor.name


@pytest.mark.parametrize("location", ["../secret.bin", "ABSOLUTE", "sub/../../secret.bin", "config.json/../x"])
def test_external_data_outside_the_folder_is_refused_before_ort_sees_it(copy, location):
    location = str(copy.parent / "secret.bin") if location == "ABSOLUTE" else location
    tensor = _point_external_data(copy, location)
    for opener in (open_bundle, Generator):
        with pytest.raises(BundleError) as e:
            opener(copy)
        assert tensor in _one_line(e) and "not a file of the bundle" in str(e.value)


def test_external_data_past_the_end_of_its_file_is_refused(copy):
    path = copy / names.INFERENCE_MODEL
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = str(10**12)
    onnx.save(model, path)
    reseal(copy)
    with pytest.raises(BundleError, match=r"reads past the end of base_weights\.bin"):
        open_bundle(copy)


@pytest.mark.parametrize("target", ["SECRET", "/dev/zero"])
def test_symlinked_files_are_refused(copy, target):
    target = copy.parent / "secret.bin" if target == "SECRET" else target
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").symlink_to(target)
    with pytest.raises(BundleError) as e:
        open_bundle(copy)
    assert "tokenizer.json: a symlink" in _one_line(e)


def test_a_symlinked_subfolder_and_a_fifo_are_refused(copy, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (copy / "extra").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match="extra: a symlink"):
        open_bundle(copy)
    (copy / "extra").unlink()
    os.mkfifo(copy / "pipe")
    with pytest.raises(BundleError, match="pipe: not a regular file"):
        open_bundle(copy)


def test_an_entry_deleted_from_the_manifest_does_not_switch_off_checking(copy):
    manifest = json.loads((copy / names.MANIFEST).read_text())
    del manifest["files"]["special_tokens_map.json"]
    (copy / names.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"special_tokens_map.json: not listed in the manifest"):
        open_bundle(copy)


def test_edited_graphs_are_refused_by_generate_too(copy):
    flip_byte(copy / names.INFERENCE_MODEL, 200)
    with pytest.raises(BundleError, match=r"inference.onnx: sha256 does not match the manifest"):
        Generator(copy)
    (copy / names.MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        Generator(copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(files=[]), "field files must be a non-empty object"),
        (lambda m: m.pop("source"), "field source.weights_sha256"),
        (lambda m: m.pop("kind"), "field kind is None"),
        (lambda m: m["files"]["config.json"].update(size="12"), "files['config.json'].size"),
        (lambda m: m["files"]["config.json"].update(sha256="xyz"), "files['config.json'].sha256"),
        (lambda m: m["files"].pop("checkpoint"), "does not list checkpoint"),
        (lambda m: m.update(adapted_modules="q_proj"), "field adapted_modules"),
        (lambda m: m["adapter_config"].update(lora_alpha=float("nan")), "adapter_config.lora_alpha"),
        (lambda m: m["files"].update({"../x": {"size": 1, "sha256": "0" * 64}}), "'../x', which is not a plain"),
        (lambda m: m["files"].update({"/etc/passwd": {"size": 1, "sha256": "0" * 64}}), "not a plain file name"),
    ],
)
def test_malformed_manifests_are_one_line_errors(copy, edit, message):
    manifest = json.loads((copy / names.MANIFEST).read_text())
    edit(manifest)
    (copy / names.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as e:
        open_bundle(copy)
    assert message in _one_line(e)


def test_the_verify_cache_skips_hashing_until_a_file_changes(copy, monkeypatch):
    hashed = []
    real = bundle_module._sha256_regular
    monkeypatch.setattr(bundle_module, "_sha256_regular", lambda p: hashed.append(p.name) or real(p))
    open_bundle(copy)
    assert len(hashed) == len(json.loads((copy / names.MANIFEST).read_text())["files"])
    hashed.clear()
    open_bundle(copy)
    assert hashed == []  # (size, mtime, ctime, inode) unchanged: trusted
    path = copy / names.BASE_WEIGHTS
    st = os.stat(path)
    flip_byte(path, 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, mtime set back: the ctime still moved
    with pytest.raises(BundleError, match=r"base_weights\.bin: sha256 does not match"):
        open_bundle(copy)
    flip_byte(path, 4096)
    open_bundle(copy)
    cache = json.loads((copy / names.VERIFY_CACHE).read_text())
    cache["files"][names.BASE_WEIGHTS][-1] = "f" * 64  # a forged record: its MAC no longer matches
    (copy / names.VERIFY_CACHE).write_text(json.dumps(cache))
    hashed.clear()
    open_bundle(copy)
    assert names.BASE_WEIGHTS in hashed
