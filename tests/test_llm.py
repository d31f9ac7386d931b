"""The OpenAI-compatible client against a real local HTTP server with scripted replies."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.decompose import DecompositionError
from agent.llm import OpenAIDecomposer, parse_reply
from tasks import retrace

GOAL = "go left for 3 steps, then go up for 4 steps, then retrace your path back to where you started"
GOOD = {"subgoals": ["go left for 3 steps", "go up for 4 steps", retrace.RETRACE_TEXT]}


class ScriptedChat(BaseHTTPRequestHandler):
    replies: list = []
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        reply = type(self).replies.pop(0) if type(self).replies else GOOD
        if isinstance(reply, tuple) and reply[0] == "sleep":
            time.sleep(reply[1])
            reply = GOOD
        content = reply if isinstance(reply, str) else json.dumps(reply)
        payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": content}}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class ScriptedServer(ThreadingHTTPServer):
    # Handler threads are joined when the server closes: a reply still being written after its
    # test ended (the timeout test's) would otherwise print its error into a later test's stderr.
    daemon_threads = False
    block_on_close = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out has hung up
            super().handle_error(request, client_address)


@pytest.fixture()
def server():
    ScriptedChat.replies, ScriptedChat.requests = [], []
    httpd = ScriptedServer(("127.0.0.1", 0), ScriptedChat)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_valid_reply_is_used(server):
    decomposer = OpenAIDecomposer(model="smollm2", base_url=server, api_key="sk-secret-123")
    subgoals, report = decomposer("retrace", GOAL, {})
    assert [s.text for s in subgoals] == GOOD["subgoals"] and report["source"] == "openai"
    request = ScriptedChat.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "smollm2"
    assert "go left for 3 steps" in request["body"]["messages"][1]["content"]  # templates are listed
    assert request["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in json.dumps(report)


def test_malformed_reply_is_retried_then_accepted(server):
    ScriptedChat.replies = ["Sure! Here are the steps: left, up, back", "```json\n" + json.dumps(GOOD) + "\n```"]
    subgoals, report = OpenAIDecomposer(model="m", base_url=server)("retrace", GOAL, {})
    assert report["attempts"] == 2 and len(report["problems"]) == 1
    assert subgoals[-1].params["legs"] == 2


def test_persistent_garbage_falls_back_to_rules(server, caplog):
    ScriptedChat.replies = [{"subgoals": ["fly to the moon"]}] * 3
    subgoals, report = OpenAIDecomposer(model="m", base_url=server, attempts=3)("retrace", GOAL, {})
    assert report["source"] == "rules-fallback" and len(ScriptedChat.requests) == 3
    assert [s.text for s in subgoals] == GOOD["subgoals"]
    assert "using the rule decomposer" in caplog.text


def test_slow_server_times_out_and_falls_back(server):
    ScriptedChat.replies = [("sleep", 2.0)]
    started = time.time()
    subgoals, report = OpenAIDecomposer(model="m", base_url=server, timeout=0.5, attempts=1)("retrace", GOAL, {})
    assert time.time() - started < 2.0
    assert report["source"] == "rules-fallback" and "Timeout" in report["problems"][0]


def test_parse_reply_rejects_wrong_shapes():
    with pytest.raises(DecompositionError, match="JSON"):
        parse_reply("retrace", '{"steps": []}', {})
    with pytest.raises(DecompositionError, match="templates"):
        parse_reply("retrace", '{"subgoals": ["go sideways"]}', {})


def test_missing_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SLOWFAST_LLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="--llm-model"):
        OpenAIDecomposer(base_url="http://127.0.0.1:9/v1")


@pytest.mark.skipif(os.environ.get("SLOWFAST_LLAMA_CPP_E2E") != "1",
                    reason="opt-in: SLOWFAST_LLAMA_CPP_E2E=1 with llama-cpp-python[server] installed")
def test_real_llama_cpp_server_answers_every_attempt(tmp_path):
    """The README recipe end to end: llama.cpp's OpenAI-compatible server with SmolLM2."""
    from agent.local_llm import gguf_path

    model = gguf_path()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", "2048"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(1)
        subgoals, report = OpenAIDecomposer(model="smollm2", base_url=base_url, timeout=120)("retrace", GOAL, {})
        # A 135 M model may well reply with invalid subgoals; what must not happen is a failed request.
        assert all("Error" not in problem for problem in report["problems"]), report["problems"]
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        assert subgoals[-1].text == retrace.RETRACE_TEXT
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
