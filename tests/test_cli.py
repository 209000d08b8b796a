"""The CLI's promise on bad input: one line on stderr, a non-zero exit, nothing half-written."""

import json
import shutil
import subprocess
import sys

import pytest

from edgetune.common.names import ADAPTER_CONFIG
from tests.tamper import reseal


def edgetune(*args, stdin=None):
    """Run the CLI in a fresh process; return (exit code, stdout, stderr)."""
    p = subprocess.run(
        [sys.executable, "-m", "edgetune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        input=stdin,
    )
    return p.returncode, p.stdout, p.stderr


def _one_line_error(code, err, *needles):
    assert code == 1, err
    assert err.startswith("edgetune: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_train_names_the_bad_line_and_writes_no_run(tiny_bundle, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "the quick brown fox"}\n{"text": "a lazy dog"\n{"text": "ok"}\n')
    code, _, err = edgetune("train", tiny_bundle("llama"), "--data", data, "-o", tmp_path / "run", "--steps", "2")
    _one_line_error(code, err, "train.jsonl:2:")
    assert not (tmp_path / "run").exists()
    code, _out, err = edgetune(
        "train",
        tiny_bundle("llama"),
        "--data",
        data,
        "-o",
        tmp_path / "run",
        "--steps",
        "2",
        "--skip-bad-lines",
        "--no-progress",
        "--batch-size",
        "2",
    )
    assert code == 0, err
    assert (tmp_path / "run" / "adapter" / ADAPTER_CONFIG).is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_lines"] == 1


def test_train_refuses_a_corrupted_bundle(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("llama"), bundle)
    with open(bundle / "checkpoint", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the quick brown fox"}\n')
    code, _, err = edgetune("train", bundle, "--data", data, "-o", tmp_path / "run", "--steps", "1")
    _one_line_error(code, err, "checkpoint", "sha256")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x", "--top-p", "0"], "top_p"),
        (["--prompt", "x", "--top-k", "-3"], "top_k"),
        (["--prompt", "date " * 400], "context"),
        (["--prompt", "x", "--adapter", "/nonexistent/adapter"], "no such adapter folder"),
        ([], "--prompt"),
    ],
)
def test_generate_bad_input(args, needle, tiny_bundle):
    code, _, err = edgetune("generate", tiny_bundle("llama"), *args, "--max-new-tokens", "4")
    _one_line_error(code, err, needle)


def test_generate_truncate_keeps_the_end_of_a_long_prompt(tiny_bundle):
    code, _out, err = edgetune(
        "generate",
        tiny_bundle("llama"),
        "--prompt",
        "date " * 400,
        "--truncate",
        "--max-new-tokens",
        "4",
        "--no-stream",
    )
    assert code == 0, err


def test_generate_without_spinning_threads_writes_the_same_text(tiny_bundle):
    """--no-spin changes how the threads wait, not what they compute: greedy text equals the default's."""
    args = ("generate", tiny_bundle("llama"), "--prompt", "the date", "--max-new-tokens", "8", "--no-stream")
    (code, out, err), (spun, out_spun, err_spun) = edgetune(*args, "--no-spin"), edgetune(*args)
    assert code == spun == 0, err + err_spun
    assert out == out_spun and out.strip()


def test_generate_with_a_folded_adapter(tiny_bundle, tmp_path):
    """--fold decodes the adapter from folded weights: the text is the engine's with the adapter folded."""
    from edgetune.runtime.engine import Engine
    from tests.serve.conftest import make_adapter

    bundle = tiny_bundle("llama")
    adapter = make_adapter(bundle, tmp_path / "a", seed=3)
    args = ("generate", bundle, "--prompt", "the date", "--max-new-tokens", "8", "--no-stream", "--adapter", adapter)
    code, out, err = edgetune(*args, "--fold")
    assert code == 0, err
    engine = Engine(bundle)
    engine.load_adapter("a", adapter)
    engine.fold_adapter("a")
    assert out.strip() == engine.generate_many([engine.encode("the date")], "a", max_new_tokens=8)[0].strip()


def test_chat_needs_a_chat_template(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("llama"), bundle)
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bundle / "tokenizer_config.json").write_text(json.dumps(config))
    (bundle / "chat_template.jinja").unlink(missing_ok=True)
    reseal(bundle)
    code, _, err = edgetune("generate", bundle, "--chat", "--prompt", "hi", "--max-new-tokens", "4")
    _one_line_error(code, err, "chat template")
    code, out, err = edgetune(
        "generate", tiny_bundle("llama"), "--chat", "--max-new-tokens", "4", "--no-stream", stdin="hello\nthe date\n"
    )
    assert code == 0, err
    assert len([line for line in out.splitlines()]) >= 2  # one reply per typed turn


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "BUNDLE", "--data", "DATA", "-o", "RUN", "--steps", "0"], "--steps: must be a whole number >= 1"),
        (["train", "BUNDLE", "--data", "DATA", "-o", "RUN", "--eval-every", "5"], "--eval-every: needs eval data"),
        (["build", "MODEL", "-o", "OUT", "--method", "qlora"], "--quant: method qlora needs a quant type"),
        (["build", "MODEL", "-o", "OUT", "--rank", "0"], "--rank: must be a whole number >= 1, got 0"),
        (["build", "MODEL", "-o", "OUT", "--dropout", "1.5"], "--dropout: must be in [0, 1), got 1.5"),
        (["serve", "BUNDLE", "--fold", "x"], "--fold: 'x' is not one of the --adapter names"),
        (["eval", "BUNDLE", "--data", "DATA", "--fold"], "--fold needs --adapter"),
    ],
)
def test_a_refused_option_is_named_by_its_flag(args, message, tmp_path):
    """Configs refuse fields in library terms; the CLI shows the flag that set the field."""
    fill = {
        "BUNDLE": tmp_path / "b",
        "DATA": tmp_path / "d.jsonl",
        "RUN": tmp_path / "run",
        "MODEL": tmp_path / "m",
        "OUT": tmp_path / "out",
    }
    code, _, err = edgetune(*[fill.get(a, a) for a in args])
    _one_line_error(code, err, message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
