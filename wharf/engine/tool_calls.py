"""Function tools in the prompt and tool calls in the output, in the Hermes format.

Hermes' format (NousResearch Hermes 2/3, Qwen 2.5/3, SmolLM3 and most open chat models
that call tools) shows the tools inside <tools></tools> in the system prompt, and the
model answers a call as <tool_call>{"name": ..., "arguments": {...}}</tool_call>. A chat
template that renders `tools` itself is trusted to do so (its model was trained on its
own rendering; only the Hermes reply format is parsed back). A template that knows
nothing of tools (SmolLM2's) gets Hermes' own system block and rendering of earlier
calls and their results, so the parser reads back the format the model was shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)

_SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass
class ToolCall:
    name: str
    arguments: str        # a JSON object, as text


def template_renders_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def for_template(messages: list[dict], tools: list[dict] | None, *, native: bool) -> list[dict]:
    """Messages ready for the chat template: with `native` (the template renders tools and
    tool calls) only the calls' arguments become objects, as such templates expect;
    otherwise the tools, earlier calls and their results are written out in Hermes' form."""
    if native:
        return [{**m, "tool_calls": [_with_object_arguments(c) for c in m["tool_calls"]]}
                if m.get("tool_calls") else m for m in messages]
    out = []
    for m in messages:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = [f'{OPEN}\n{json.dumps(_call_json(c), ensure_ascii=False)}\n{CLOSE}' for c in m["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
            out.append({"role": m["role"], "content": content})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": content})
    if tools:
        block = _SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f'{out[0]["content"]}\n\n{block}'}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def parse(text: str) -> tuple[str, list[ToolCall]]:
    """(the text around the calls, the calls) of a model's answer. A call that is not a
    JSON object with a string `name` stays in the text; an unclosed last call (the model
    ended at EOS) counts."""
    calls, kept, last = [], [], 0
    for match in _CALL.finditer(text):
        call = _read_call(match.group(1))
        if call is None:
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    return "".join(kept).strip(), calls


def held_back(text: str) -> int:
    """How many characters at the end of streamed `text` could begin a call's OPEN tag."""
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-k:]):
            return k
    return 0


def _read_call(body: str) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):         # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _arguments_object(call: dict) -> dict:
    args = call.get("function", {}).get("arguments", {})
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except ValueError:
            return {"_": args}
    return args


def _call_json(call: dict) -> dict:
    return {"name": call.get("function", {}).get("name", ""), "arguments": _arguments_object(call)}


def _with_object_arguments(call: dict) -> dict:
    fn = call.get("function", {})
    return {**call, "function": {**fn, "arguments": _arguments_object(call)}}
