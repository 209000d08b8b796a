"""A request's life in the decode engine: its state, the events it yields, and each new token's stop checks."""

from dataclasses import dataclass, field

import numpy as np

from edgetune.runtime.sampling import Sampler
from edgetune.runtime.text_stream import TextStream

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


@dataclass(frozen=True)
class Event:
    """One request's progress in a step: a new token and the text that became final with it.

    token_id is None when the request ended without a new token (cancelled). finish_reason:
    "stop" (EOS, a stop id or a stop string), "length" (max_new_tokens or the cache is full)
    or "cancelled"; None while the request goes on.
    """

    request_id: str
    token_id: int | None
    text: str
    finished: bool = False
    finish_reason: str | None = None


@dataclass(eq=False)  # compared by identity
class Request:
    """A queued or decoding request: its prompt, adapter slot, sampler, stops and place in the cache."""

    id: str
    prompt: list[int]
    slot: int
    adapter: str | None
    sampler: Sampler
    max_new_tokens: int
    stop_ids: frozenset
    text: TextStream
    row: int = -1
    length: int = 0  # tokens in the row's cache
    prefilled_before: int = 0  # the cache length before the latest prefill chunk
    generated: int = 0
    next_token: int = 0  # the last sampled token, fed at the next decode step
    tokens: list[int] = field(default_factory=list)

    def advance(self, logits: np.ndarray, capacity: int) -> tuple[int, str, str | None]:
        """Sample the next token from logits (V,); return it, the text it made final and the finish reason
        (None while the request goes on)."""
        token = self.sampler(logits)
        self.tokens.append(token)
        self.generated += 1
        self.next_token = token
        if token in self.stop_ids:
            return token, "", FINISH_STOP
        piece = self.text.push(token)
        if self.text.stopped:
            return token, piece, FINISH_STOP
        if self.generated >= self.max_new_tokens or self.length >= capacity:
            return token, piece, FINISH_LENGTH
        return token, piece, None
