"""A request admitted into a row below one that is decoding keeps its cache (continuous batching)."""

import numpy as np

from edgetune.runtime.engine import Engine

PROMPT_A, PROMPT_B, PROMPT_C = [5, 17, 42, 8], [7, 7, 31, 60, 12], [60, 12, 250, 3, 44, 90]


def _row_cache(engine: Engine, row: int, length: int) -> dict[str, np.ndarray]:
    return {name: buffer[row, :, :length].copy() for name, buffer in engine.cache.buffers.items()}


def test_a_request_joining_a_lower_row_keeps_its_cache_and_tokens(tiny_bundle):
    engine = Engine(tiny_bundle("llama"), max_batch=4)
    engine.add("c", PROMPT_C, max_new_tokens=16)
    first = engine.step()  # c prefilled alone in row 0
    alone_cache = _row_cache(engine, 0, len(PROMPT_C))
    alone = [first[0].token_id]
    while engine.has_work:
        alone += [e.token_id for e in engine.step()]

    engine.add("a", PROMPT_A, max_new_tokens=2)  # row 0, soon free again
    engine.add("b", PROMPT_B, max_new_tokens=30)  # row 1, decoding throughout
    while engine.active != 1 or engine.waiting:  # prefill both, then decode until a has its 2 tokens
        engine.step()
    engine.add("c", PROMPT_C, max_new_tokens=16)
    tokens = [e.token_id for e in engine.step() if e.request_id == "c"]  # c prefilled in row 0, b decodes in row 1
    cache = _row_cache(engine, 0, len(PROMPT_C))
    for name, values in alone_cache.items():
        np.testing.assert_array_equal(cache[name], values, err_msg=name)
    while engine.has_work:
        tokens += [e.token_id for e in engine.step() if e.request_id == "c"]
    assert tokens == alone
