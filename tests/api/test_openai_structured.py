"""Structured output, JSON mode and tool calls through the real openai SDK, over HTTP,
on the real embedded model (SmolLM2-135M): what a 135M model returns under a grammar
always parses and validates."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import MODEL


@pytest.fixture(scope="module")
def client(server, api_key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


class City(BaseModel):
    # Up to 20 characters a string can be 20 tokens each: with the JSON around them a City
    # takes up to ~65 tokens, so requests for one allow 120.
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=100_000_000)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["tz"],
                   "properties": {"tz": {"type": "string", "maxLength": 20}}}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = ["Tell me about Paris.", "Describe the largest city in Japan.", "请介绍一下北京。", "Give me a city."]


def parallel(fn, args):
    with concurrent.futures.ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(fn, args))


def test_parse_with_a_pydantic_model_greedy_sampled_and_chinese(client):
    def ask(case):
        prompt, temperature = case
        return client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                             response_format=City, max_tokens=120, temperature=temperature, seed=7)
    cases = [(p, t) for p in PROMPTS for t in (0, 1.0)]
    schema = City.model_json_schema()
    for r in parallel(ask, cases):
        choice = r.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, City)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_schema_streamed_on_chat_and_json_object_on_completions(client):
    schema = {"type": "object", "required": ["answer"], "additionalProperties": False,
              "properties": {"answer": {"type": "string", "maxLength": 30}}}
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "用JSON回答：天空是什么颜色？"}], stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}},
        max_tokens=60, temperature=0.8, n=2, seed=1)
    texts, finishes = {0: "", 1: ""}, {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes.get(c.index)
    assert finishes == {0: "stop", 1: "stop"}
    for text in texts.values():
        jsonschema.validate(json.loads(text), schema)

    whole = client.completions.create(model=MODEL, prompt="A JSON object describing a cat:", max_tokens=60,
                                      temperature=0, extra_body={"response_format": {"type": "json_object"}})
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="A JSON object describing a cat:", max_tokens=60, temperature=0, stream=True,
        extra_body={"response_format": {"type": "json_object"}}) if c.choices]
    assert "".join(pieces) == whole.choices[0].text
    if whole.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(whole.choices[0].text), dict)


@pytest.mark.parametrize("response_format", [
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(("}}},
    {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
    {"type": "xml"},
    "json",
])
def test_bad_response_format_is_a_400_naming_it(client, response_format):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       extra_body={"response_format": response_format})
    assert err.value.body["param"] == "response_format", err.value.body


@pytest.mark.parametrize("extra, param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
      "tool_choice": "required"}, "tools"),
])
def test_bad_tools_are_a_400_naming_the_param(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       extra_body=extra)
    assert err.value.body["param"] == param, err.value.body


def _check_calls(message, names):
    assert message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_tool_choice_give_valid_calls(client):
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]

    def ask(choice):
        # One call: given the choice, a 135M model goes on listing calls until max_tokens.
        return client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice=choice,
                                              parallel_tool_calls=False, max_tokens=80, temperature=0.7, seed=3)
    required, named = parallel(ask, ["required", {"type": "function", "function": {"name": "get_time"}}])
    assert required.choices[0].finish_reason == "tool_calls"
    _check_calls(required.choices[0].message, {"get_weather", "get_time"})
    assert named.choices[0].finish_reason == "tool_calls"
    _check_calls(named.choices[0].message, {"get_time"})
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["get_time"]


def test_tool_calls_stream_as_the_sdk_assembles_them(client):
    msgs = [{"role": "user", "content": "北京现在几点？"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        kw = dict(model=MODEL, messages=msgs, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False,
                  max_tokens=80, temperature=0)
        with client.chat.completions.stream(**kw) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].finish_reason == "tool_calls"
        _check_calls(final.choices[0].message, {"get_weather", "get_time"})
        whole = client.chat.completions.create(**kw)
        assert ([(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls]
                == [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls])


def test_auto_and_none_and_a_tool_result_follow_up(client):
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    auto = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, max_tokens=40, temperature=0)
    choice = auto.choices[0]
    if choice.message.tool_calls:               # the model decides; either answer is well formed
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message, {"get_weather", "get_time"})
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")
    none = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice="none",
                                          max_tokens=20, temperature=0)
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content
    follow = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'}]
    answer = client.chat.completions.create(model=MODEL, messages=follow, tools=TOOLS, max_tokens=30,
                                            temperature=0)
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_usage_counts_constrained_output(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A city"}],
                                       response_format={"type": "json_object"}, max_tokens=12, temperature=0)
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_tokenize_and_detokenize(server, api_key):
    auth = {"Authorization": f"Bearer {api_key}"}
    r = httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": "你好 world"}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] > 0
    back = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": body["tokens"]}, headers=auth)
    assert back.status_code == 200 and back.json() == {"prompt": "你好 world"}
    chat = httpx.post(server.url + "/tokenize", headers=auth, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True}).json()
    assert chat["count"] > body["count"] - 3 and chat["tokens"]
    assert httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": "x"}).status_code == 401
    bad = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": [-1]}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
