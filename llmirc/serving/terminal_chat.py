"""`llmirc chat ARTIFACT`: a terminal conversation over the step engine and the chat template.

One line of input is one user message; the reply streams as it is generated. The whole
conversation is rendered with the template each turn (the prefix cache then serves the
earlier turns' pages again). When the conversation outgrows the model's context, the oldest
turns are dropped, with a notice. `/exit` or end of input ends the chat, `/reset` forgets
the conversation, Ctrl-C stops the reply being generated. Input need not be a terminal, so
`printf 'hi\\n' | llmirc chat OUT/` works (and is how the tests drive it).
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from llmirc.errors import LlmircError

from .chat_template import ChatTemplate

EXIT_COMMANDS = ("/exit", "/quit")


@dataclass
class ChatSession:
    """A conversation with `engine` (LLMEngine's contract), stepped in this thread."""

    engine: Any
    template: ChatTemplate
    make_params: Callable[[int], Any]  # max_tokens -> SamplingParams
    max_tokens: int = 256
    system: str | None = None
    notice: Callable[[str], None] = print
    messages: list[dict[str, str]] = field(default_factory=list)
    _ids: Any = field(default_factory=itertools.count, repr=False)

    def reset(self) -> None:
        self.messages = []

    def reply(self, user_text: str, write: Callable[[str], None]) -> str:
        """Send one user message; `write` gets the reply's pieces as they come. Returns the
        reply text (what was generated before an interrupt, if any)."""
        message = {"role": "user", "content": user_text}
        self.messages.append(message)
        try:
            ids, budget = self._fit()
        except LlmircError:  # too long, or the template failed on it: forget this message
            if self.messages and self.messages[-1] is message:
                self.messages.pop()
            raise
        rid = f"chat-{next(self._ids)}"
        self.engine.add_request(rid, ids, self.make_params(budget))
        pieces = []
        with _ctrl_c_flag() as interrupted:
            while self.engine.has_unfinished_requests():
                if interrupted():  # stop this reply, keep the conversation
                    self.engine.abort(rid)
                for out in self.engine.step():
                    if out.request_id == rid and out.outputs[0].new_text:
                        pieces.append(out.outputs[0].new_text)
                        write(out.outputs[0].new_text)
        text = "".join(pieces)
        self.messages.append({"role": "assistant", "content": text})
        return text

    def _prompt_ids(self) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        text = self.template.render(head + self.messages, add_generation_prompt=True)
        return self.engine.tokenizer.encode(text, add_special_tokens=False).ids

    def _fit(self) -> tuple[list[int], int]:
        """The prompt ids and the reply's token budget, dropping the oldest turns until at
        least a few tokens (or max_tokens) fit in the context."""
        limit = self.engine.max_model_len
        dropped = 0
        while True:
            ids = self._prompt_ids()
            room = limit - len(ids)
            if room >= min(self.max_tokens, 16) or len(self.messages) == 1:
                break
            self.messages = self.messages[2:] if len(self.messages) > 2 else self.messages[-1:]
            dropped += 1
        if dropped:
            self.notice(f"notice: dropped the {dropped} oldest turn(s) to fit the model's context ({limit} tokens)")
        if room < 1:
            raise LlmircError(f"this message is {len(ids)} tokens with the template; the model's context is "
                              f"{limit}: send a shorter one")
        return ids, min(self.max_tokens, room)


@contextmanager
def _ctrl_c_flag():
    """Ctrl-C only sets a flag, checked between engine steps: a KeyboardInterrupt in the middle
    of a step could leave the engine's pages and queues half-updated."""
    hit = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda *_: hit.__setitem__(0, True))
    try:
        yield lambda: hit[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def run_chat(session: ChatSession, lines: Iterable[str], write: Callable[[str], None],
             prompt: Callable[[], None] = lambda: None, error: Callable[[str], None] = print) -> None:
    """The read-reply loop: one reply per non-empty line until /exit or the end of `lines`.
    A message that cannot be answered (too long) is an `error:` line, and the chat goes on."""
    prompt()
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip() in EXIT_COMMANDS:
            return
        if text.strip() == "/reset":
            session.reset()
        elif text.strip():
            try:
                session.reply(text, write)
            except LlmircError as e:
                error(f"error: {e}")
            else:
                write("\n")
        prompt()
