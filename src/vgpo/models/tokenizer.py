"""Prompt tokenizer of the tiny model: words outside quotes, characters inside the first quoted span.

Word tokens cover a world's closed vocabulary ("a photo of two red circles"); the quoted target of a
text-rendering prompt (`a sign that says "RIVER"`) is spelled character by character so that words
never seen in training can still be conditioned on.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch

PAD, UNK, QUOTE = "<pad>", "<unk>", '<">'
_WORD = re.compile(r"[a-z0-9]+")


def _is_char(token: str) -> bool:
    return len(token) == 1 and (token.isupper() or token.isdigit())


def _char_token(c: str) -> str:
    return f"<c:{c}>"


class PromptTokenizer:
    def __init__(self, vocab: Sequence[str], max_tokens: int = 24):
        """``vocab``: a world's words, plus single upper-case letters or digits, which are the
        characters allowed inside quotes. Special tokens are added in front."""
        chars = sorted({c for c in vocab if _is_char(c)})
        words = sorted({w.lower() for w in vocab if not _is_char(w)})
        self.tokens = [PAD, UNK, QUOTE] + words + [_char_token(c) for c in chars]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.max_tokens = max_tokens
        self.warned_long = False  # a prompt cut to max_tokens is reported once per tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def split(self, prompt: str) -> list[str]:
        before, quote, rest = prompt.partition('"')
        pieces = _WORD.findall(before.lower())
        if quote:
            quoted, _, after = rest.partition('"')
            pieces += [QUOTE] + [_char_token(c) for c in quoted if not c.isspace()] + [QUOTE]
            pieces += _WORD.findall(after.lower())
        return pieces

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, max_tokens) long and a validity mask (B, max_tokens) bool; the empty prompt
        (the CFG null condition) is all padding."""
        ids = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            toks = [self.index.get(t, self.index[UNK]) for t in self.split(prompt)]
            if len(toks) > self.max_tokens and not self.warned_long:
                self.warned_long = True
                warnings.warn(
                    f"prompt of {len(toks)} tokens cut to the model's {self.max_tokens}: {prompt[:60]!r}"
                    f"{'...' if len(prompt) > 60 else ''} (reported once; later long prompts are cut too)",
                    stacklevel=2,
                )
            toks = toks[: self.max_tokens]
            ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return ids, ids != 0
