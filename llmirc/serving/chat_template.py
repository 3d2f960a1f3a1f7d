"""Chat templates: the checkpoint's jinja2 template turns messages into one prompt text.

A template is code shipped with a downloaded checkpoint, so it is untrusted: it is rendered
in jinja2's ImmutableSandboxedEnvironment, as transformers does, where attribute access to
internals (`''.__class__.__mro__`), mutation of the arguments and unsafe callables raise
SecurityError instead of running. The environment matches transformers' (trim_blocks,
lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a `tojson` that keeps
non-ASCII text), so templates written for transformers render the same text here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmirc.errors import LlmircError

TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.43 saves the template beside the tokenizer
MAX_TEMPLATE_CHARS = 1 << 20


class ChatTemplateError(LlmircError):
    """No template, an unreadable one, or one that fails to render these messages."""


@dataclass(frozen=True)
class ChatTemplate:
    """A template's source plus the special-token texts templates expect as variables."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    origin: str = ""

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for `messages` (dicts with role and content); ChatTemplateError if
        the template raises, fails, or tries something the sandbox forbids."""
        import jinja2
        from jinja2.sandbox import SecurityError

        try:
            template = _compile(self.source)
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=self.bos_token, eos_token=self.eos_token, **extra)
        except SecurityError as e:
            raise ChatTemplateError(f"the chat template ({self.origin}) tried an unsafe operation: {e}") from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError, OverflowError, RecursionError) as e:
            raise ChatTemplateError(f"the chat template ({self.origin}) failed on these messages: "
                                    f"{_one_line(e)}") from None


def load_chat_template(artifact_dir: Path, override: Path | None = None) -> ChatTemplate | None:
    """`override` (--chat-template FILE), else the artifact's chat_template.jinja, else
    tokenizer_config.json's `chat_template` (a string, or a list of named templates of which
    "default" is used); None when the model has none. The template is compiled now, so a
    broken one is an error at start-up, not on the first request."""
    config = _read_config(artifact_dir / "tokenizer_config.json")
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    if override is not None:
        source, origin = _read_text(override), str(override)
    elif (artifact_dir / TEMPLATE_FILE).is_file():
        source, origin = _read_text(artifact_dir / TEMPLATE_FILE), str(artifact_dir / TEMPLATE_FILE)
    else:
        source, origin = _from_config(config.get("chat_template")), f"{artifact_dir / 'tokenizer_config.json'}"
        if source is None:
            return None
    template = ChatTemplate(source, bos, eos, origin)
    try:
        _compile(source)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise ChatTemplateError(f"the chat template in {origin} does not parse: {_one_line(e)}") from None
    return template


def no_template_message(artifact_dir: Path) -> str:
    return (f"the model at {artifact_dir} has no chat template (no chat_template in its tokenizer_config.json); "
            "start the server with --chat-template FILE, or use /v1/completions")


@lru_cache(maxsize=8)
def _compile(source: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _from_config(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) and chosen else None
    return None


def _token_text(value: Any) -> str:
    """bos_token/eos_token are a string or an AddedToken dict ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChatTemplateError(f"{path} cannot be read as JSON ({_one_line(e)})") from None
    return data if isinstance(data, dict) else {}


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"the chat template {path} is larger than {MAX_TEMPLATE_CHARS} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChatTemplateError(f"the chat template {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"the chat template {path} cannot be read ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
