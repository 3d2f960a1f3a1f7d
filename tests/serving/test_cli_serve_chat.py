"""`llmirc serve` as a user starts it (a subprocess on 127.0.0.1, stopped with Ctrl-C),
its start-up errors, `llmirc chat` on piped stdin, and `llmirc run --prompt -`."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
from click.testing import CliRunner

from llmirc.cli import main
from llmirc.runtime.llm_engine import LLMEngine
from llmirc.runtime.sampling import SamplingParams
from llmirc.serving.chat_template import load_chat_template
from llmirc.serving.terminal_chat import ChatSession, run_chat

from tests.cli import assert_one_error, run_cli
from .conftest import run_alone


def invoke(*args, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, prog_name="llmirc")


def test_serve_subprocess_answers_and_stops_on_ctrl_c(serve_artifact, template_file):
    proc = subprocess.Popen([sys.executable, "-m", "llmirc.cli", "serve", str(serve_artifact), "--port", "0",
                             "--served-model-name", "tiny", "--chat-template", str(template_file),
                             "--api-key", "k", "--uvicorn-log-level", "warning"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=120)
        assert first.startswith("serving ") and "'tiny'" in first and "127.0.0.1:" in first, first
        url = first.split(" on ")[1].split()[0]
        auth = {"Authorization": "Bearer k"}
        deadline = time.monotonic() + 60
        while True:  # the line is printed just before uvicorn starts accepting
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.1)
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        r = httpx.post(url + "/v1/chat/completions", headers=auth, timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0


def test_serve_startup_errors(serve_artifact, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_one_error(run_cli("serve", serve_artifact, "--port", port), "cannot listen on 127.0.0.1:")
    assert_one_error(run_cli("serve", tmp_path / "nothing", "--port", 0), "nothing")
    assert_one_error(run_cli("serve", serve_artifact, "--port", 0, "--chat-template", tmp_path / "no.jinja"),
                     "no.jinja")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for %}")
    assert_one_error(run_cli("serve", serve_artifact, "--port", 0, "--chat-template", bad), "does not parse")
    assert_one_error(run_cli("serve", serve_artifact, "--port", 0, "--max-model-len", 100000), "max_model_len 100000")
    assert_one_error(run_cli("serve", serve_artifact, "--max-num-seqs", 0), "--max-num-seqs")


def test_chat_cli_on_piped_stdin(serve_artifact, template_file):
    res = invoke("chat", serve_artifact, "--chat-template", template_file, "--max-tokens", 4,
                 input="hello\n\n/exit\nnever read\n")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() and "error" not in res.stderr
    assert_one_error(invoke("chat", serve_artifact, input="hi\n"), "no chat template", "--chat-template")


def test_chat_session_turns_match_the_engine_alone(serve_artifact, template_file):
    engine = LLMEngine.from_artifact(serve_artifact, num_pages=40)
    template = load_chat_template(serve_artifact, template_file)
    session = ChatSession(engine, template, lambda n: SamplingParams(max_tokens=n), max_tokens=5, system="sys")
    pieces: list[str] = []
    run_chat(session, ["first\n", "second\n", "/exit\n", "third\n"], pieces.append)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    # the second turn is the whole conversation rendered, as a server would get it
    text = template.render([{"role": "system", "content": "sys"}] + session.messages[:3])
    ids = engine.tokenizer.encode(text, add_special_tokens=False).ids
    _, ref, _ = run_alone(LLMEngine.from_artifact(serve_artifact, num_pages=40), ids, SamplingParams(max_tokens=5))
    assert session.messages[3]["content"] == ref
    assert "".join(pieces).endswith(ref + "\n")


def test_chat_drops_old_turns_to_fit(serve_artifact, template_file):
    engine = LLMEngine.from_artifact(serve_artifact, num_pages=40)
    notices: list[str] = []
    session = ChatSession(engine, load_chat_template(serve_artifact, template_file),
                          lambda n: SamplingParams(max_tokens=n), max_tokens=40, notice=notices.append)
    for i in range(6):
        session.reply(f"message number {i} " * 3, lambda s: None)
    assert notices and "dropped" in notices[0]
    assert session.messages[-2]["content"].startswith("message number 5")
    errors: list[str] = []
    run_chat(session, ["x " * 200 + "\n"], lambda s: None, error=errors.append)
    assert len(errors) == 1 and errors[0].startswith("error: ") and "context" in errors[0]


def test_run_reads_the_prompt_from_stdin(serve_artifact):
    piped = invoke("run", serve_artifact, "--prompt", "-", "--max-tokens", 4, "-q", input="In the beginning\n")
    given = invoke("run", serve_artifact, "--prompt", "In the beginning", "--max-tokens", 4, "-q")
    assert piped.exit_code == 0 and piped.stdout == given.stdout
    assert piped.stdout.startswith("In the beginning")
    assert_one_error(invoke("run", serve_artifact, "--prompt", "-", input=""), "empty prompt")
    assert_one_error(invoke("run", serve_artifact, "--prompt", "-", "--prompt", "-", input="x"), "only once")


def test_ctrl_c_stops_only_the_reply(serve_artifact, template_file):
    engine = LLMEngine.from_artifact(serve_artifact, num_pages=40)
    step, calls = engine.step, [0]

    def step_then_ctrl_c():
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C, in the middle of the reply
        return step()

    engine.step = step_then_ctrl_c
    session = ChatSession(engine, load_chat_template(serve_artifact, template_file),
                          lambda n: SamplingParams(max_tokens=n, ignore_eos=True), max_tokens=50)
    session.reply("hello", lambda s: None)
    assert calls[0] < 10 and not engine.has_unfinished_requests() and engine.stats.num_pages_used == 0
    assert session.messages[-1]["role"] == "assistant"
    session.reply("again", lambda s: None)  # the chat goes on
    assert len(session.messages) == 4 and calls[0] > 50
