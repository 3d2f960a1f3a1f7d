"""Chat templates: where they come from, the same text as transformers renders, the sandbox."""

from __future__ import annotations

import json
import shutil

import pytest

from llmirc.serving.chat_template import ChatTemplateError, load_chat_template

# Zephyr's template (as shipped in its tokenizer_config.json), plus a raise_exception branch
# and loop controls, which transformers' environment provides.
ZEPHYR = ("{% for message in messages %}{% if message['role'] == 'wizard' %}"
          "{{ raise_exception('no wizards here') }}{% endif %}"
          "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}"
          "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token }}"
          "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
          "{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye"}]


@pytest.fixture
def artifact_dir(tiny_checkpoint, tmp_path):
    """A directory laid out as an artifact's tokenizer files are."""
    d = tmp_path / "art"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / name, d / name)
    return d


def _set_config(d, **changes):
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, **changes}))


def test_same_text_as_transformers(artifact_dir):
    transformers = pytest.importorskip("transformers")
    _set_config(artifact_dir, chat_template=ZEPHYR)
    ours = load_chat_template(artifact_dir)
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(artifact_dir))
    for add in (True, False):
        theirs = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add)
        assert ours.render(MESSAGES, add_generation_prompt=add) == theirs


def test_where_the_template_comes_from(artifact_dir, tmp_path):
    assert load_chat_template(artifact_dir) is None  # the test checkpoint ships none
    _set_config(artifact_dir, chat_template=[{"name": "tool_use", "template": "T"},
                                             {"name": "default", "template": "D{{ bos_token }}"}])
    assert load_chat_template(artifact_dir).render([]) == "D<s>"
    (artifact_dir / "chat_template.jinja").write_text("J")
    assert load_chat_template(artifact_dir).render([]) == "J"
    override = tmp_path / "mine.jinja"
    override.write_text("M{{ messages | length }}")
    assert load_chat_template(artifact_dir, override).render(MESSAGES) == "M4"


def test_template_errors(artifact_dir, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    with pytest.raises(ChatTemplateError, match="does not parse"):
        load_chat_template(artifact_dir, bad)
    with pytest.raises(ChatTemplateError, match="does not exist"):
        load_chat_template(artifact_dir, tmp_path / "missing.jinja")
    _set_config(artifact_dir, chat_template=ZEPHYR)
    with pytest.raises(ChatTemplateError, match="no wizards here"):
        load_chat_template(artifact_dir).render([{"role": "wizard", "content": "x"}])


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{% set x = messages.append({'role': 'user'}) %}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
])
def test_sandbox_refuses_unsafe_templates(artifact_dir, tmp_path, source):
    path = tmp_path / "evil.jinja"
    path.write_text(source)
    with pytest.raises(ChatTemplateError, match="unsafe operation"):
        load_chat_template(artifact_dir, path).render(list(MESSAGES))
