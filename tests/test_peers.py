"""The third-party runtimes we compare against really run here (scripts/peers.sh bootstraps them)."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.common.embedded import smollm2_gguf
from tests.peers import ROOT, chromium_path, peer_run

CHECKS = ROOT / "scripts" / "peer_checks"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.mark.slow
def test_llama_cpp_decodes_the_embedded_gguf():
    out = peer_run("llama", [CHECKS / "llama_decode.py", smollm2_gguf(), "--tokens", "16", "--threads", "2"])
    result = json.loads(out.stdout)
    print(
        f"llama-cpp-python {result['llama_cpp']}: {result['tokens']} tokens, "
        f"{result['tokens_per_s']} tokens/s decode; {result['text']!r}"
    )
    assert result["llama_cpp"] == "0.3.36"
    assert result["text"].strip() and result["tokens"] > 1


def _lora_model(path, d_in=6, d_out=5):
    """y = x @ W + (x @ A) @ B, with A and B graph inputs whose defaults are rank-1 zeros."""
    w = np.random.default_rng(0).standard_normal((d_in, d_out)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["base"]),
        helper.make_node("MatMul", ["x", "lora_A"], ["xa"]),
        helper.make_node("MatMul", ["xa", "lora_B"], ["delta"]),
        helper.make_node("Add", ["base", "delta"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.zeros((d_in, 1), np.float32), "lora_A"),  # rank 0 crashes ORT 1.19
        numpy_helper.from_array(np.zeros((1, d_out), np.float32), "lora_B"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d_in]),
        helper.make_tensor_value_info("lora_A", TensorProto.FLOAT, [d_in, "r"]),
        helper.make_tensor_value_info("lora_B", TensorProto.FLOAT, ["r", d_out]),
    ]
    graph = helper.make_graph(
        nodes, "lora", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return w


def test_latest_onnxruntime_runs_an_onnx_adapter(tmp_path):
    w = _lora_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    r, alpha = 4, 8.0
    a = rng.standard_normal((6, r)).astype(np.float32)
    b = rng.standard_normal((r, 5)).astype(np.float32)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    np.savez(tmp_path / "weights.npz", lora_A=a, lora_B=b * (alpha / r))  # the file stores no alpha
    np.save(tmp_path / "x.npy", x)
    out = peer_run(
        "ort",
        [
            CHECKS / "ort_adapter.py",
            tmp_path / "model.onnx",
            tmp_path / "weights.npz",
            tmp_path / "x.npy",
            tmp_path / "out.npz",
        ],
    )
    version = out.stdout.strip()
    print(f"onnxruntime {version}")
    assert tuple(map(int, version.split(".")[:2])) >= (1, 20)
    result = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(result["base"], x @ w, atol=1e-5)
    np.testing.assert_allclose(result["adapted"], x @ w + (alpha / r) * (x @ a @ b), atol=1e-5)


def test_onnxruntime_genai_imports():
    code = "import onnxruntime as ort, onnxruntime_genai as og; print(og.__version__, ort.__version__)"
    genai, ort_version = peer_run("genai", ["-c", code]).stdout.split()
    print(f"onnxruntime-genai {genai} on onnxruntime {ort_version}")
    assert genai.startswith("0.18.")


def test_node_is_at_least_20():
    from tests.peers import ensure_peer

    ensure_peer("node")
    version = subprocess.run(
        ["node", "-e", "console.log(process.versions.node)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(version.split(".")[0]) >= 20


PAGE = """<!doctype html><title>peer check</title>
<button id="go" onclick="document.getElementById('out').textContent = 'clicked ' + (1 + 2)">Go</button>
<p id="out">waiting</p>"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"http.server on 127.0.0.1:{port} did not start (exit {proc.poll()})")


@pytest.mark.slow
def test_headless_chromium_clicks_a_served_page(tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    (tmp_path / "index.html").write_text(PAGE)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/index.html")
            page.click("#go")
            text = page.text_content("#out")
            (ROOT / "artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "artifacts" / "peers_chromium.png"))
            version = browser.version
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"chromium {version}")
    assert text == "clicked 3"
