"""Generator against transformers on tiny random decoders exported by Optimum (and the real SmolLM2)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgetune.common import names
from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.common.peft import PEFT_PREFIX
from edgetune.runtime.generate import Generator
from edgetune.runtime.sampling import Sampler, SamplingParams
from edgetune.runtime.text_stream import TextStream
from tests.runtime import gen_fixtures
from tests.tamper import copy_bundle, reseal
from tests.tiny_models import ALL_ARCHS

PROMPT = "the date of march is"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """family -> (torch model, exported folder), each exported once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = gen_fixtures.build_tiny(family, tmp_path_factory.mktemp(family))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def llama(build):
    model, folder = build("llama")
    return model, folder, Generator(folder)


def hf_greedy(model, ids, n):
    """transformers' greedy continuation of `ids`."""
    with torch.no_grad():
        return model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)[0, len(ids) :].tolist()


def variant(folder, tmp_path, edit):
    """A copy of the model folder with `edit(copy)` applied, and its manifest written anew."""
    copy = copy_bundle(folder, tmp_path / "variant")
    edit(copy)
    reseal(copy)
    return copy


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_greedy_matches_transformers(build, family):
    model, folder = build(family)
    g = Generator(folder)
    ids = g.encode(PROMPT)
    ours = g.generate_ids(ids, 32)
    assert len(ours) == 32 and ours == hf_greedy(model, ids, 32)


def test_sampling_is_seeded_and_top_k_1_is_greedy(llama):
    _, _, g = llama
    ids = g.encode(PROMPT)
    a = g.generate_ids(ids, 24, temperature=1.0, top_p=0.9, seed=7)
    assert a == g.generate_ids(ids, 24, temperature=1.0, top_p=0.9, seed=7)
    assert a != g.generate_ids(ids, 24, temperature=1.0, top_p=0.9, seed=8)
    assert g.generate_ids(ids, 24, temperature=1.5, top_k=1, seed=3) == g.generate_ids(ids, 24)


def test_sampler_filters_and_frequencies():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))

    def draw(n, **options):
        sampler = Sampler(SamplingParams(seed=0, **options))
        return np.bincount([sampler(logits) for _ in range(n)], minlength=4)

    assert draw(4000, temperature=1.0) / 4000 == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)
    assert draw(2000, temperature=1.0, top_k=2)[2:].sum() == 0
    assert draw(2000, temperature=1.0, top_p=0.75)[2:].sum() == 0  # 0.5 + 0.3 reaches 0.75
    assert draw(2000, temperature=1.0, top_p=0.5)[1:].sum() == 0
    assert draw(2000, temperature=0.05)[1:].sum() == 0  # cold is nearly greedy


def test_stream_pieces_join_to_generate_and_to_the_decoded_ids(llama):
    _, _, g = llama
    pieces = list(g.stream(PROMPT, 32))
    assert len(pieces) > 1 and "".join(pieces) == g.generate(PROMPT, 32)
    assert "".join(pieces) == g.tokenizer.decode(g.generate_ids(g.encode(PROMPT), 32))


def test_text_stream_holds_back_partial_characters(llama):
    tok = llama[2].tokenizer
    text = " café über €5 日本 naïve 🙂 done"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens are bare bytes of a character
    stream = TextStream(tok, tok.encode("hello", add_special_tokens=False).ids)
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_stop_strings_cut_the_text(llama):
    _, _, g = llama
    full = g.generate(PROMPT, 32)
    stop = full[10:13]
    cut = full[: full.index(stop)]
    assert g.generate(PROMPT, 32, stop=["never there", stop]) == cut
    assert "".join(g.stream(PROMPT, 32, stop=[stop])) == cut
    assert g.generate(PROMPT, 32, stop=["never there"]) == full


def test_eos_ids_from_generation_config_stop_decoding(llama, tmp_path):
    _, folder, g = llama
    ids = g.encode(PROMPT)
    greedy = g.generate_ids(ids, 32)
    eos = greedy[4]
    first = greedy.index(eos)

    def set_eos(copy):
        (copy / names.GENERATION_CONFIG).write_text(json.dumps({"eos_token_id": [2, eos]}))

    g2 = Generator(variant(folder, tmp_path, set_eos))
    assert g2.generate_ids(ids, 32) == greedy[: first + 1]  # EOS included in the ids
    assert g2.generate(PROMPT, 32) == g.tokenizer.decode(greedy[:first])  # but not in the text


def test_context_length(llama):
    _, _, g = llama
    long_ids = g.encode(" hello world" * 100)
    assert len(long_ids) > g.max_context == 128
    with pytest.raises(EdgetuneError, match="more than the model's context of 128"):
        g.generate_ids(long_ids, 8)
    assert g.generate_ids(long_ids, 8, truncate=True) == g.generate_ids(long_ids[-120:], 8)
    assert len(g.generate_ids(long_ids[:120], 32)) == 9  # decoding stops when the cache is full
    with pytest.raises(EdgetuneError, match="empty"):
        g.generate_ids([], 8)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_options_fail_before_decoding(llama, options, message):
    g = llama[2]
    with pytest.raises(EdgetuneError, match=message) as e:
        g.stream(PROMPT, **options)  # raises on the call, not on first iteration
    assert "\n" not in str(e.value)


def test_chat_renders_like_transformers(llama):
    model, folder, g = llama
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the date"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True)
    assert g.chat_prompt(messages) == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    reply = hf_greedy(model, ids, 16)
    assert g.chat(messages, 16) == hf_tok.decode(reply, skip_special_tokens=True)


def test_chat_without_template(llama, tmp_path):
    def drop_template(copy):
        (copy / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((copy / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (copy / "tokenizer_config.json").write_text(json.dumps(config))

    g = Generator(variant(llama[1], tmp_path, drop_template))
    with pytest.raises(EdgetuneError, match="no chat template"):
        g.chat([{"role": "user", "content": "hi"}])


def test_lora_inputs_default_to_off_and_match_peft(llama, tmp_path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    _, folder, g = llama
    module = "model.layers.0.self_attn.q_proj"
    lora_dir = variant(folder, tmp_path, lambda c: gen_fixtures.add_lora_inputs(c / names.MERGED_MODEL, module))
    g_lora = Generator(lora_dir)
    a_name, b_name = (f"{PEFT_PREFIX}{module}.lora_{x}.weight" for x in "AB")
    assert g_lora._extra_feeds[a_name].shape == (1, 64) and g_lora._extra_feeds[names.LORA_SCALING] == 0
    ids = g.encode(PROMPT)
    assert g_lora.generate_ids(ids, 16) == g.generate_ids(ids, 16)

    fresh = AutoModelForCausalLM.from_pretrained(folder.parent / "hf").eval()  # PEFT edits the model in place
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], layers_to_transform=[0])
    peft_model = get_peft_model(fresh, config)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in get_peft_model_state_dict(peft_model).items()}  # PEFT's file keys
    set_peft_model_state_dict(peft_model, state)
    g_lora._set_extra_feeds({a_name: state[a_name].numpy(), b_name: state[b_name].numpy(), names.LORA_SCALING: 2.0})
    ours = g_lora.generate_ids(ids, 16)
    assert ours == hf_greedy(peft_model, ids, 16) != g.generate_ids(ids, 16)

    with pytest.raises(AdapterError, match="not an adapter input"):
        g_lora._set_extra_feeds({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 64))})
    with pytest.raises(AdapterError, match=r"shape \[4, 32\] does not fit"):
        g_lora._set_extra_feeds({a_name: np.zeros((4, 32))})


@pytest.mark.parametrize("arch", ALL_ARCHS)  # every family: its KV cache, sliding windows, logit tails
def test_bundle_greedy_matches_transformers(arch, tiny_bundle, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    g = Generator(tiny_bundle(arch))  # base weights in base_weights.bin, adapter tensors as inputs
    assert g._extra_feeds[names.LORA_SCALING] == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()
    ids = g.encode(PROMPT)
    assert g.generate_ids(ids, 32) == hf_greedy(model, ids, 32)


def test_generation_runs_without_the_dev_libraries(llama):
    # Block them, as on a device: with torch installed, `import onnxruntime` (training build) imports it itself.
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'optimum', 'peft'): sys.modules[m] = None\n"
        "from edgetune.runtime.generate import Generator\n"
        "print(Generator(sys.argv[1]).generate_ids([5, 6, 7], 4))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(llama[1])], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(llama[2].generate_ids([5, 6, 7], 4))


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_bundle):
    from transformers import AutoModelForCausalLM

    from edgetune.common.embedded import smollm2_gguf

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    g = Generator(smollm2_bundle)
    ids = g.encode("Convert to ISO date: 5 March 2021\nISO:")
    assert g.generate_ids(ids, 32) == hf_greedy(model, ids, 32)
    messages = [{"role": "user", "content": "Name three colours."}]
    chat_ids = g.tokenizer.encode(g.chat_prompt(messages), add_special_tokens=False).ids
    reply = hf_greedy(model, chat_ids, 32)
    end = next((i for i, t in enumerate(reply) if t in g.eos_token_ids), len(reply))
    assert g.chat(messages, 32) == g.tokenizer.decode(reply[:end])
