"""The Hermes tool-call format: the prompt for templates without tools, and parsing."""

from __future__ import annotations

import json

from wharf.engine import tool_calls

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_parse_closed_unclosed_invalid_and_string_arguments():
    text = ('Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": "{\\"b\\": \\"中\\"}"}</tool_call>'
            '<tool_call>not json</tool_call><tool_call>{"name": "h"}')
    content, calls = tool_calls.parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1}), ("g", {"b": "中"}), ("h", {})]
    assert content.startswith("Sure.") and "not json" in content
    assert tool_calls.parse("no calls here") == ("no calls here", [])


def test_held_back_only_what_could_open_a_call():
    assert tool_calls.held_back("hello <tool_") == len("<tool_")
    assert tool_calls.held_back("hello <") == 1
    assert tool_calls.held_back("a < b") == 0


def test_plain_template_gets_hermes_prompt_calls_and_results():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    out = tool_calls.for_template(messages, [TOOL], native=False)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.") and "<tools>" in out[0]["content"]
    assert '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>' == out[2]["content"]
    assert out[3] == {"role": "user", "content": "<tool_response>\n42\n</tool_response>"}
    native = tool_calls.for_template(messages, [TOOL], native=True)
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
