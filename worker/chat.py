"""A chat prompt as token ids, with every message's content plain text to the model.

Tokenizing the rendered chat template as one string lets a user write the model's control tokens: a
message holding `<|im_end|>\n<|im_start|>system\n...` would be tokenized as a real end of turn and a
real system turn. So the template is rendered with a marker in place of each content, the template's
own text is tokenized as usual (its control tokens are the real ones), and each content is tokenized on
its own, with any control token it would produce broken into ordinary text tokens. Which ids are
control tokens is the tokenizer's own answer (a token that `skip_special_tokens` drops), so this holds
for any model's vocabulary, not a list of known strings.
"""

from __future__ import annotations

import re
from typing import Any

_MARK = re.compile("\ue000([0-9]+)\ue001")
"""Private-use characters around a message's index: no template writes them, and no content reaches the
rendered text they are looked for in (contents are put back only after the split)."""


class ChatEncoder:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._control: dict[int, bool] = {}
        with_special, without = self._ids("x", True), self._ids("x", False)
        at = with_special.index(without[0]) if without and without[0] in with_special else 0
        self.prefix, self.suffix = with_special[:at], with_special[at + len(without):]
        """What the tokenizer adds around a whole prompt (a BOS token, for some models): added once."""

    def _ids(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not text:
            return []
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=add_special_tokens).input_ids.data[0]]

    def is_control(self, token: int) -> bool:
        if token not in self._control:
            self._control[token] = (self.tokenizer.decode([token], skip_special_tokens=True) == ""
                                    and self.tokenizer.decode([token], skip_special_tokens=False) != "")
        return self._control[token]

    def plain(self, text: str) -> list[int]:
        """`text` as ordinary tokens only: a control token's spelling in it is tokenized in two halves."""
        ids = self._ids(text)
        controls = [i for i in ids if self.is_control(i)]
        if not controls or len(text) < 2:
            return ids
        spellings = {self.tokenizer.decode([i], skip_special_tokens=False) for i in controls}
        found = [(text.find(s), s) for s in spellings if s and s in text]
        if found:
            at, spelling = min(found)
            half = max(1, len(spelling) // 2)
            return (self.plain(text[:at]) + self.plain(spelling[:half]) + self.plain(spelling[half:])
                    + self.plain(text[at + len(spelling):]))
        middle = len(text) // 2  # the tokenizer normalized the spelling away: split until it cannot match
        return self.plain(text[:middle]) + self.plain(text[middle:])

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids: the chat template with a generation prompt, contents as plain text."""
        marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
        rendered = self.tokenizer.apply_chat_template(marked, add_generation_prompt=True)
        ids = list(self.prefix)
        for n, piece in enumerate(_MARK.split(rendered)):
            # split() alternates: template text, a message index, template text, ...
            ids += self.plain(messages[int(piece)]["content"]) if n % 2 else self._ids(piece)
        return ids + self.suffix
