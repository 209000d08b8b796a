"""Next-token choice from one row of logits: greedy, or temperature -> top-k -> top-p sampling.

The order of the filters is the one transformers' `generate` applies, so the same
settings mean the same thing in both. numpy only.
"""

import math
from dataclasses import dataclass

import numpy as np

from edgetune.common.errors import EdgetuneError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token; `temperature == 0` is greedy, `top_k == 0` and `top_p == 1` switch a filter off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not _number(self.temperature) or not 0 <= self.temperature < math.inf:  # also rejects NaN
            raise EdgetuneError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise EdgetuneError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _whole(self.top_k) or self.top_k < 0:
            raise EdgetuneError(f"top_k must be a whole number >= 0 (0 = off), got {self.top_k}")
        if self.seed is not None and (not _whole(self.seed) or self.seed < 0):
            raise EdgetuneError(f"seed must be a whole number >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature 0, or only one candidate kept)."""
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Picks token ids from logits rows with `params`, drawing from its own seeded numpy Generator."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """The next token id for `logits` of shape (V,)."""
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        scores = (logits.astype(np.float64) - logits.max()) / p.temperature  # (V,) <= 0: a tiny T cannot overflow
        if 0 < p.top_k < scores.size:
            kth = np.partition(scores, -p.top_k)[-p.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()  # (V,)
        if p.top_p < 1:
            order = np.argsort(-probs, kind="stable")  # (V,) most likely first
            before = np.cumsum(probs[order]) - probs[order]  # mass of the tokens ranked above each one
            dropped = order[before >= p.top_p]  # keep the smallest head whose mass reaches top_p
            probs[dropped] = 0.0
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


def _number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
