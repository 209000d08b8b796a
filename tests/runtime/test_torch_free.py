"""The device side trains without torch, transformers, optimum or peft installed."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import edgetune
from tests.tiny_models import sample_text

BANNED = ("torch", "transformers", "optimum", "peft")
# `sys.modules[name] = None` is what "not installed" looks like to both `import name`
# (ImportError) and `importlib.util.find_spec(name)` (None), which ORT itself calls. A
# meta-path finder that raises would make that probe raise instead, unlike a real device.
UNINSTALL = f"import sys\nfor name in {BANNED}:\n    sys.modules[name] = None\n"
TRAIN = f"""
import json
from edgetune.options import TrainConfig
from edgetune.runtime.train import train
summary = train(TrainConfig(**json.loads(sys.argv[1])))
summary["loaded"] = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in {BANNED})
print(json.dumps(summary))
"""


DEV_BOX_SIDE = "builder"  # the one package that may import them


def test_no_device_side_module_imports_torch_or_friends():
    package = Path(edgetune.__file__).parent
    paths = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] != DEV_BOX_SIDE]
    assert len(paths) > 20
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in BANNED], f"{path.name}:{node.lineno} imports {names}"


def test_training_runs_with_torch_uninstalled(tiny_bundle, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_text(16)))
    args = dict(
        bundle=str(tiny_bundle("llama")),
        data=str(data),
        eval_data=str(data),
        out=str(tmp_path / "run"),
        steps=4,
        batch_size=4,
        seq_len=48,
        eval_every=2,
        progress=False,
    )
    proc = subprocess.run(
        [sys.executable, "-c", UNINSTALL + TRAIN, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["loaded"] == []
    assert summary["steps"] == 4 and summary["final_eval_loss"] > 0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["startup_s"] > 0  # process start -> first step done (a figure, not a bound: see BENCHMARKS.md)
    print(f"torch-free start-up: {summary['startup_s']:.2f} s, {summary['tokens_per_s']:.0f} tokens/s")
