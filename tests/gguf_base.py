"""A tiny HF model folder as a float32 base GGUF file, converted by llama.cpp's own convert_hf_to_gguf.py.

    python -m tests.gguf_base LLAMA_SRC HF_DIR OUT.gguf      (with .venv's python: it needs torch)

Run as a subprocess, because it patches the converter for the tests' tokenizer: a tiny
trained byte-level BPE whose pre-tokenizer hash llama.cpp does not know. Its vocabulary is
written as a GPT-2 style BPE ("gpt-2" pre-tokenizer) for every family; the tests feed
token ids, so llama.cpp's tokenizer never runs. GPT2Config no longer saves `n_ctx`, which
the GPT-2 converter reads: it is set to `n_positions`. Tensors and hyper-parameters are converted
exactly as for a real model.
"""

import runpy
import subprocess
import sys
from pathlib import Path


def convert(llama_src: Path, hf_dir: Path, out: Path) -> Path:
    """Convert `hf_dir` to `out` (float32) in a subprocess; return `out`."""
    cmd = [sys.executable, "-m", "tests.gguf_base", str(llama_src), str(hf_dir), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir}:\n{proc.stderr[-3000:]}")
    return out


def _main(llama_src: Path, hf_dir: str, out: str) -> None:
    sys.path[:0] = [str(llama_src), str(llama_src / "gguf-py")]
    import conversion
    from conversion.base import ModelBase, TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    load_hparams = ModelBase.load_hparams

    def with_n_ctx(*args, **kwargs):  # GPT2Config saves n_positions; the GPT-2 converter reads n_ctx
        hparams = load_hparams(*args, **kwargs)
        if "n_positions" in hparams:
            hparams.setdefault("n_ctx", hparams["n_positions"])
        return hparams

    ModelBase.load_hparams = staticmethod(with_n_ctx)
    find_class = conversion.get_model_class

    def get_model_class(*args, **kwargs):
        cls = find_class(*args, **kwargs)
        cls.set_vocab = lambda self: self._set_vocab_gpt2()
        return cls

    conversion.get_model_class = get_model_class
    # a neutral name: llama.cpp's vocabulary loader looks for a Phi-3 token when the name says phi3
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", "f32", "--model-name", "tiny"]
    runpy.run_path(str(llama_src / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    _main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
