"""The fed extra's stack: flwr 1.42 brings protobuf 6.x, and onnx 1.17 and ORT 1.19.2 keep working with it.

The whole suite runs in this environment (scripts/setup.sh installs the fed extra), so
every build and training test also runs on protobuf 6; this test names the versions
and makes one ONNX model travel through protobuf, the checker and an ORT session.
"""

import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def test_versions_pinned_together():
    assert importlib.metadata.version("flwr") == "1.42.0"
    assert importlib.metadata.version("protobuf").startswith("6.")
    assert onnx.__version__.startswith("1.17.")
    assert ort.__version__ == "1.19.2"


def test_onnx_and_ort_work_on_protobuf_6(tmp_path):
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, tmp_path / "m.onnx")
    onnx.checker.check_model(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": np.array([[1.0, 1.0]], np.float32)})[0], [[4.0, 6.0]])


UNINSTALL = "import sys\nfor name in ('torch', 'transformers', 'optimum', 'peft'):\n    sys.modules[name] = None\n"
IMPORTS = """
import json
import edgetune.fed.client_app, edgetune.fed.server_app, edgetune.fed.simulation, edgetune.fed.strategies
import edgetune.fed.secagg_client, edgetune.fed.secagg_server
banned = ("torch", "transformers", "optimum", "peft")
print(json.dumps(sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in banned)))
"""


def test_the_fleet_apps_import_without_torch():
    proc = subprocess.run([sys.executable, "-c", UNINSTALL + IMPORTS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_secagg_plus_runs_only_on_flowers_legacy_context():
    """Why the fleet's SecAgg+ rounds use Flower's legacy API (fed.secagg_server): 1.42's workflow refuses a Message API
    context."""
    import pytest
    from flwr.app import Context, RecordDict
    from flwr.server.workflow import SecAggPlusWorkflow

    with pytest.raises(TypeError, match="LegacyContext"):
        SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2)(None, Context(1, 0, {}, RecordDict(), {}))
