"""WeLM dialect (seed 000) over real HTTP against a real `wharf serve` on the embedded model:
what needs the model's own text (greedy equal to OpenAI's, n, echo, stop characters, the
lexicon on output). Shape, auth, ranges, the window, limits and usage are in
test_welm_validation.py, in process.

There is no WeLM SDK; clients post JSON with httpx exactly as the seed's curl does."""

from __future__ import annotations

import re
import string

import httpx
import pytest

MODEL = "smollm2-135m-instruct"      # as in tests/conftest.py
PATH = "/welm/v1/completions"
PROMPT = "The capital of France is Paris. The capital of Germany is"
CN_PROMPT = "请用中文回答。中国的首都是北京。日本的首都是"


@pytest.fixture(scope="module")
def key(server):
    return server.account("welm-tests")[1]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post(client, key, body, *, bare=False):
    auth = key if bare else f"Bearer {key}"
    body = {k: v for k, v in body.items() if v is not None}     # None: leave the field out
    return client.post(PATH, json=body, headers={"Authorization": auth})


def greedy(client, key, prompt, max_tokens=16, **extra) -> dict:
    r = post(client, key, {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           **extra})
    assert r.status_code == 200, r.text
    return r.json()


# -- greedy, as OpenAI's --------------------------------------------------------------------

def test_default_max_tokens_is_16_and_matches_openai_greedy(server, client, key, api_key):
    """temperature 0 is argmax: the text equals OpenAI /v1/completions greedy for the same
    prompt and max_tokens (16, WeLM's default, which the WeLM body here leaves out)."""
    welm = greedy(client, key, PROMPT, max_tokens=None)  # None is dropped below
    oa = client.post("/v1/completions", headers={"Authorization": f"Bearer {api_key}"},
                     json={"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert oa.status_code == 200, oa.text
    oa = oa.json()
    assert welm["choices"][0]["text"] == oa["choices"][0]["text"]
    expected = {"length": "length", "stop": "finished"}[oa["choices"][0]["finish_reason"]]
    assert welm["choices"][0]["finish_reason"] == expected


def test_temperature_zero_n_identical_and_equal_to_openai(client, key, api_key):
    body = greedy(client, key, PROMPT, max_tokens=12, n=4)
    texts = [c["text"] for c in body["choices"]]
    assert len(texts) == 4 and len(set(texts)) == 1
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    oa = client.post("/v1/completions", headers={"Authorization": f"Bearer {api_key}"},
                     json={"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
    assert texts[0] == oa["choices"][0]["text"]


def test_length_finish_reason_is_distinct(client, key):
    body = greedy(client, key, "1, 2, 3, 4, 5, 6,", max_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"


# -- n, echo, stop --------------------------------------------------------------------------

def test_n12_distinct_samples(client, key):
    r = post(client, key, {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "n": 12})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(12))
    texts = [c["text"] for c in choices]
    assert len(set(texts)) >= 8, texts


def test_echo_prepends_prompt(client, key):
    plain = greedy(client, key, PROMPT, max_tokens=6)["choices"][0]["text"]
    echoed = greedy(client, key, PROMPT, max_tokens=6, echo=True)["choices"][0]["text"]
    assert echoed == PROMPT + plain


def test_echo_chinese_prompt(client, key):
    plain = greedy(client, key, CN_PROMPT, max_tokens=8)["choices"][0]["text"]
    echoed = greedy(client, key, CN_PROMPT, max_tokens=8, echo=True)["choices"][0]["text"]
    assert echoed == CN_PROMPT + plain
    assert "\ufffd" not in plain


def _cut(text: str, stops: str) -> str:
    idx = [text.index(c) for c in set(stops) if c in text]
    return text[:min(idx)] if idx else text


def test_each_stop_character_stops_on_its_own(client, key):
    full = greedy(client, key, PROMPT, max_tokens=16)["choices"][0]["text"]
    # a character that appears after the start, plus one that never appears
    later = next(ch for ch in full[1:] if ch not in full[:1] and ch.strip())
    stops = "\x07" + later
    out = greedy(client, key, PROMPT, max_tokens=16, stop=stops)["choices"][0]
    assert out["text"] == _cut(full, stops)
    assert later not in out["text"]
    assert out["finish_reason"] == "finished"


def test_chinese_stop_character(client, key):
    full = greedy(client, key, CN_PROMPT, max_tokens=16)["choices"][0]["text"]
    cjk = [ch for ch in full if ord(ch) > 0x2E80]
    stops = "。" + (cjk[len(cjk) // 2] if cjk else "")
    out = greedy(client, key, CN_PROMPT, max_tokens=16, stop=stops)["choices"][0]
    assert out["text"] == _cut(full, stops)
    assert not set(out["text"]) & set(stops)


def test_first_character_is_stop_gives_empty_text_not_error(client, key):
    everything = string.printable + "。,,、"
    r = post(client, key, {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                           "stop": everything})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "" and choice["finish_reason"] == "finished"


# -- safety: a server with a lexicon ------------------------------------------------------

@pytest.fixture(scope="module")
def lexicon_server(server, server_factory, key, client, tmp_path_factory):
    """A second server whose lexicon holds a word the model writes greedily for PROMPT."""
    full = greedy(client, key, PROMPT, max_tokens=16)["choices"][0]["text"]
    word = next(w for w in re.findall(r"[A-Za-z]{4,}", full) if w.casefold() not in PROMPT.casefold())
    path = tmp_path_factory.mktemp("lex") / "lexicon.txt"
    path.write_text(f"forbiddenthing\n敏感词\n{word}\n", encoding="utf-8")
    s = server_factory(extra_env={"WHARF_LEXICON_PATH": str(path)})
    return s, s.account("welm-safety")[1]


def test_blocked_prompt_is_400_content_policy(lexicon_server):
    s, k = lexicon_server
    with httpx.Client(base_url=s.url, timeout=120) as c:
        for prompt in ("tell me about forbiddenthing", "这是敏感词吗"):
            r = post(c, k, {"model": MODEL, "prompt": prompt, "max_tokens": 4})
            assert r.status_code == 400
            assert r.json()["choices"][0]["finish_reason"] == "error: content policy violation"


def test_blocked_output_is_200_internal_error(lexicon_server):
    s, k = lexicon_server
    with httpx.Client(base_url=s.url, timeout=120) as c:
        r = post(c, k, {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "error: internal error"
