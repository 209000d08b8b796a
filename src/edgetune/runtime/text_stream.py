"""Streaming text out of generated token ids: release only text that is final."""


class TextStream:
    """Incremental detokenizer: text is released only once it is final.

    Held back: bytes of an unfinished UTF-8 character (decoded as U+FFFD) and any tail
    that could be the start of a stop string. Each new piece is the difference between
    decoding ids[prefix:] and ids[prefix:read], so tokenizers that drop a leading space
    on the first token (SentencePiece) still join correctly; a few prompt tokens seed
    the window for the same reason.
    """

    CONTEXT_TOKENS = 4

    def __init__(self, tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        """Start after `prompt_ids`; `stop` strings end the text (without them)."""
        self.tokenizer, self.stop = tokenizer, stop
        self.ids = list(prompt_ids[-self.CONTEXT_TOKENS :])
        self.prefix, self.read = 0, len(self.ids)
        self.text, self.sent, self.stopped = "", 0, False

    def _new_text(self) -> str:
        """Decoded text of the ids after `read`, given the context ids[prefix:read]."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        return decode(self.ids[self.prefix :], skip_special_tokens=True)[len(before) :]

    def push(self, token: int) -> str:
        """Add one token id; return the text that became final (maybe "")."""
        self.ids.append(token)
        new = self._new_text()
        if new and not new.endswith("\ufffd"):
            self.text += new
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: return whatever is still held back (up to a stop string)."""
        self.text += self._new_text()
        self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        """Advance `sent` past final text and return it; sets `stopped` at a stop string."""
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop if s) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._stop_prefix_len()
        piece, self.sent = self.text[self.sent : end], end
        return piece

    def _stop_prefix_len(self) -> int:
        """Length of the longest unsent tail of `text` that begins some stop string."""
        tail = self.text[self.sent :]
        for k in range(min(len(tail), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(tail[-k:]) for s in self.stop):
                return k
        return 0
