"""Issue 15, findings 2 and 8, over HTTP against real `wharf serve` processes.

Finding 8: a lexicon term split by invisible characters (each separator the issue found
passing, one per class) is blocked on input in every dialect, and in the streamed output
of every dialect. The output side runs through a gateway (`--backend upstream`) in front
of a scripted OpenAI-compatible upstream on loopback, so the answer holds exactly the
separators under test; the guard is the same pipeline code as for the embedded engine.

Finding 2: with a word of the embedded model's greedy answer in the lexicon, logprobs
(chat `logprobs.content` with `top_logprobs`, completions `tokens`/`top_logprobs`/
`text_offset`) carry exactly the tokens of the text that was let out, streamed and not,
and nothing past the cut. Also through the gateway, whose upstream sends several tokens
per chunk.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest import MODEL
from tests.loopback_http import LoopbackHTTP
from tests.policy_http.dialects import ALL_DIALECTS, COMPLETION_DIALECTS, call, provision

pytestmark = pytest.mark.slow

SEPARATORS = [0x2062, 0x2063, 0x200E, 0x202C, 0x2066, 0x180E, 0x034F, 0xFE0F, 0xE0020, 0x061C, 0x115F]
TERMS = ["forbiddenthing", "敏感词"]
BLOCKED_FINISH = {"openai": "content_filter", "qianfan": "content_filter", "welm": "error: internal error",
                  "sensenova": "sensitive"}


def _admin(server) -> dict:
    assert server.admin_key
    return {"Authorization": f"Bearer {server.admin_key}"}


def _set_lexicon(server, terms: list[str]) -> None:
    r = httpx.put(server.url + "/admin/api/safety/lexicon", headers=_admin(server), json={"terms": terms},
                  timeout=30)
    assert r.status_code == 200, r.text


# -- a scripted upstream --------------------------------------------------------------------

def script_for(body: dict) -> list[str]:
    """The answer's pieces (one SSE chunk each) for the marker in the prompt."""
    text = json.dumps(body.get("messages") or body.get("prompt"), ensure_ascii=False)
    m = re.search(r"emit (latin|chinese) ([0-9a-f]+)", text)
    if m is None:
        return ["Hello", " there", "."]
    s = chr(int(m.group(2), 16))
    if m.group(1) == "latin":
        return ["Sure: ", "for", "bid" + s, "den", s + "thi", "ng", " and more", "."]
    return ["好的：", "敏" + s, "感", s + "词", "。"]


class ScriptedUpstream(LoopbackHTTP):
    """OpenAI-compatible on loopback: /v1/models lists MODEL; completions and chat answer
    the pieces of script_for(body) as a stream, with per-piece logprobs when asked."""

    async def respond(self, head: bytes, body: bytes):
        if head.startswith(b"GET /v1/models"):
            return b"200 OK", b"application/json", json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "root": "fake/scripted", "max_model_len": 4096}]}).encode()
        return b"200 OK", b"text/event-stream", self._answer(json.loads(body))

    @staticmethod
    def _answer(body: dict) -> bytes:
        chat = "messages" in body
        pieces = script_for(body)
        frames = []
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            choice = {"index": 0, "finish_reason": "stop" if last else None}
            entry = {"token": piece, "logprob": -0.1, "top_logprobs": [{"token": piece, "logprob": -0.1}]}
            if chat:
                choice["delta"] = {"content": piece}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": [entry]}
            else:
                choice["text"] = piece
                if body.get("logprobs") is not None:
                    choice["logprobs"] = {"tokens": [piece], "token_logprobs": [-0.1],
                                          "top_logprobs": [{piece: -0.1}]}
            frames.append({"choices": [choice]})
        frames.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces)}})
        return b"".join(b"data: " + json.dumps(f, ensure_ascii=False).encode() + b"\n\n" for f in frames) \
            + b"data: [DONE]\n\n"


@pytest.fixture(scope="module")
def upstream():
    u = ScriptedUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gateway(server_factory, upstream):
    s = server_factory(extra_env={"WHARF_BACKEND": "upstream", "WHARF_UPSTREAM_URL": upstream.url})
    _set_lexicon(s, TERMS)
    return s, provision(s, "safety-gw")


@pytest.fixture(scope="module")
def model_server(server_factory):
    """The embedded model, greedy answers repeatable: prefix cache off, so a repeated
    prompt is prefilled the same way both times."""
    s = server_factory(extra_env={"WHARF_PREFIX_CACHE_MB": "0", "WHARF_THREADS": "1", "WHARF_PREFILL_THREADS": "1"})
    _set_lexicon(s, TERMS)
    return s, provision(s, "safety-model")


# -- finding 8: invisible separators ---------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_input_term_split_by_any_invisible_separator_is_blocked(gateway, dialect):
    s, ident = gateway
    passed = []
    for cp in SEPARATORS:
        sep = chr(cp)
        for prompt in (f"tell me about ＦＯＲbid{sep}den{sep}THING", f"这是敏{sep}感{sep}词吗"):
            r = call(dialect, s.url, ident, prompt, 4)
            if r.outcome != "blocked_input":
                passed.append((hex(cp), prompt, r.outcome, r.status))
    assert not passed
    # ...and a prompt with the same separators but no term is served
    assert call(dialect, s.url, ident, "for\u2062bid\u200eden \u2066things", 4).outcome == "ok"


@pytest.mark.parametrize("dialect", COMPLETION_DIALECTS + ["openai-chat", "sensenova-chat"])
def test_output_term_split_by_any_invisible_separator_is_cut(gateway, dialect):
    s, ident = gateway
    stream = dialect != "welm"             # WeLM has no stream
    wrong = []
    for cp in SEPARATORS:
        for script, before in (("latin", "Sure: "), ("chinese", "好的：")):
            r = call(dialect, s.url, ident, f"emit {script} {cp:x}", 16, stream=stream)
            seen = json.dumps(r.body, ensure_ascii=False)
            want = "" if dialect == "welm" else before         # WeLM: a blocked choice has no text
            if (r.outcome != "blocked_output" or r.finish != BLOCKED_FINISH[dialect.split("-")[0]]
                    or r.text != want or '"for' in seen or "bid" in seen or "敏" in seen):
                wrong.append((hex(cp), script, r.outcome, r.finish, r.text))
    assert not wrong
    # a clean answer through the same gateway is whole
    assert call(dialect, s.url, ident, "hi", 16, stream=stream).text == "Hello there."


# -- finding 2: logprobs cut with the text ---------------------------------------------------

CHAT_PROMPT = "What is the capital of France?"
COMPLETION_PROMPT = "The capital of France is"


def _post(server, ident, path, body):
    r = httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {ident.api_key}"},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _events(server, ident, path, body) -> list[dict]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {ident.api_key}"}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[5:]) for line in r.iter_lines()
                if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def _chat_body(max_tokens=10):
    return {"model": MODEL, "messages": [{"role": "user", "content": CHAT_PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "logprobs": True, "top_logprobs": 3}


def _completion_body(max_tokens=10):
    return {"model": MODEL, "prompt": COMPLETION_PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "logprobs": 3}


def _pick_term(tokens: list[str], avoid: str) -> tuple[str, str, int]:
    """A term spanning two word tokens of the answer past its first, found nowhere earlier
    in it nor in `avoid` (the prompts, the other answer): (term, the text before the token
    it starts in, how many tokens that text has)."""
    text = "".join(tokens)
    for k in range(1, len(tokens) - 1):
        a, b = tokens[k], tokens[k + 1]
        if not re.fullmatch(r" ?[A-Za-z]{2,}", a) or not re.fullmatch(r" [A-Za-z]{2,}", b):
            continue
        term = (a + b).strip()
        before = "".join(tokens[:k])
        if term.casefold() not in (before + a).casefold()[:-1] and term.casefold() not in avoid.casefold():
            return term, before, k
    pytest.fail(f"no two-word term in the greedy answer {text!r}")


@pytest.fixture(scope="module")
def logprob_terms(model_server):
    """The greedy answers with no term of them in the lexicon, then a term of each put in it."""
    s, ident = model_server
    chat = _post(s, ident, "/v1/chat/completions", _chat_body())["choices"][0]
    chat_tokens = [e["token"] for e in chat["logprobs"]["content"]]
    comp = _post(s, ident, "/v1/completions", _completion_body())["choices"][0]
    comp_tokens = comp["logprobs"]["tokens"]
    assert "".join(chat_tokens).startswith(chat["message"]["content"]) and comp["text"] == "".join(comp_tokens)
    prompts = CHAT_PROMPT + "\n" + COMPLETION_PROMPT
    chat_pick = _pick_term(chat_tokens, prompts + "\n" + comp["text"])
    comp_pick = _pick_term(comp_tokens, prompts + "\n" + chat["message"]["content"])
    _set_lexicon(s, TERMS + [chat_pick[0], comp_pick[0]])
    yield {"chat": chat_pick, "completions": comp_pick}
    _set_lexicon(s, TERMS)


def test_chat_logprobs_cut_with_the_text(model_server, logprob_terms):
    s, ident = model_server
    term, before, k = logprob_terms["chat"]
    c = _post(s, ident, "/v1/chat/completions", _chat_body())["choices"][0]
    assert c["finish_reason"] == "content_filter"
    assert c["message"]["content"] == before, (term, before)
    content = c["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == before and len(content) == k
    assert all(1 <= len(e["top_logprobs"]) <= 3 for e in content)

    events = _events(s, ident, "/v1/chat/completions", _chat_body())
    choices = [ch for e in events for ch in e["choices"]]
    text = toks = ""
    for ch in choices:
        piece = ch["delta"].get("content") or ""
        lp = "".join(e["token"] for e in (ch["logprobs"] or {"content": []})["content"])
        assert piece == lp, ch                     # every frame: its tokens spell its text
        text, toks = text + piece, toks + lp
    assert choices[-1]["finish_reason"] == "content_filter"
    assert text == toks == before
    assert sum(len((ch["logprobs"] or {"content": []})["content"]) for ch in choices) == k


def test_completion_logprobs_cut_with_the_text(model_server, logprob_terms):
    s, ident = model_server
    term, before, k = logprob_terms["completions"]
    c = _post(s, ident, "/v1/completions", _completion_body())["choices"][0]
    assert c["finish_reason"] == "content_filter"
    assert c["text"] == before, (term, before)
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == before
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == k
    assert all(1 <= len(t) <= 3 for t in lp["top_logprobs"])
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]

    events = _events(s, ident, "/v1/completions", _completion_body())
    choices = [ch for e in events for ch in e["choices"]]
    for ch in choices:
        assert ch["text"] == "".join((ch["logprobs"] or {"tokens": []})["tokens"]), ch
    assert choices[-1]["finish_reason"] == "content_filter"
    assert "".join(ch["text"] for ch in choices) == before
    assert sum(len((ch["logprobs"] or {"tokens": []})["tokens"]) for ch in choices) == k


def test_logprobs_through_a_gateway_are_cut_with_the_text(gateway):
    s, ident = gateway
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "emit latin 2062"}],
                                                  "logprobs": True, "top_logprobs": 1}),
                       ("/v1/completions", {"prompt": "emit latin 2062", "logprobs": 1})):
        body = {"model": MODEL, "max_tokens": 16, **body}
        c = _post(s, ident, path, body)["choices"][0]
        chat = "messages" in body
        text = c["message"]["content"] if chat else c["text"]
        tokens = [e["token"] for e in c["logprobs"]["content"]] if chat else c["logprobs"]["tokens"]
        assert c["finish_reason"] == "content_filter" and text == "".join(tokens) == "Sure: "
        seen = json.dumps(_events(s, ident, path, body), ensure_ascii=False)
        assert '"for' not in seen and "bid" not in seen
