"""OpenAI's `response_format`, `tools` and `tool_choice`: what they constrain the output
to, and how the output becomes `tool_calls` (whole, or as stream deltas).

- `response_format` json_object / json_schema: the output is JSON under that schema.
- `tool_choice` "required": the output is a JSON array of {"name", "arguments"} under
  the tools' schemas (one item when `parallel_tool_calls` is false); a named function:
  the output is that function's arguments under its schema. Either way even a small
  model's calls parse and validate.
- "auto" (the default with tools): unconstrained; the chat template shows the tools and
  the answer's Hermes <tool_call> blocks become calls (wharf/engine/tool_calls.py).
- "none": the tools are not shown, and nothing is parsed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from wharf.engine import tool_calls
from wharf.engine.tool_calls import ToolCall
from wharf.engine.types import FinishReason, StructuredOutput
from wharf.errors import InvalidParam

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def response_format(value: dict | None) -> StructuredOutput | None:
    if value is None or value.get("type") == "text":
        return None
    kind = value.get("type")
    if kind == "json_object":
        return StructuredOutput({"type": "object"})
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidParam("response_format.json_schema must be an object with a name", param="response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise InvalidParam("response_format.json_schema.schema must be a JSON Schema object",
                               param="response_format")
        return StructuredOutput(schema or {"type": "object"})
    raise InvalidParam(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                       param="response_format")


@dataclass
class ToolUse:
    """How one request uses its tools: mode is auto, none, required or named."""

    tools: list[dict]
    mode: str
    name: str | None = None
    parallel: bool = True

    @classmethod
    def parse(cls, tools: list[dict] | None, choice, parallel: bool | None) -> "ToolUse | None":
        if not tools:
            if choice not in (None, "none"):
                raise InvalidParam("tool_choice is only allowed when tools are given", param="tool_choice")
            return None
        names = [t["function"]["name"] for t in tools]
        if len(set(names)) != len(names):
            raise InvalidParam("tools must have distinct function names", param="tools")
        if choice is None or choice in ("auto", "none", "required"):
            return cls(tools, choice or "auto", parallel=parallel is not False)
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidParam("tool_choice must be 'none', 'auto', 'required' or "
                               '{"type": "function", "function": {"name": ...}}', param="tool_choice")
        if name not in names:
            raise InvalidParam(f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
        return cls(tools, "named", name, parallel=parallel is not False)

    @property
    def shown(self) -> list[dict] | None:
        """The tools the chat template shows the model."""
        return None if self.mode == "none" else self.tools

    def constraint(self) -> StructuredOutput | None:
        params = {t["function"]["name"]: t["function"].get("parameters") or EMPTY_PARAMETERS for t in self.tools}
        if self.mode == "named":
            return StructuredOutput(params[self.name], param="tools")
        if self.mode != "required":
            return None
        item = {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                           "properties": {"name": {"const": name}, "arguments": schema}}
                          for name, schema in params.items()]}
        array = {"type": "array", "items": item, "minItems": 1}
        if not self.parallel:
            array["maxItems"] = 1
        return StructuredOutput(array, param="tools")

    def answer(self, text: str, finish: FinishReason) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a finished choice. Only a choice that ended normally is read
        for calls (one cut by length or the content filter keeps its text)."""
        if finish is not FinishReason.STOP or self.mode == "none":
            return text, []
        if self.mode == "named":
            return None, [ToolCall(self.name, text)]
        if self.mode == "required":
            try:
                return None, [ToolCall(c["name"], json.dumps(c["arguments"], ensure_ascii=False))
                              for c in json.loads(text)]
            except (ValueError, KeyError, TypeError):
                return text, []
        content, calls = tool_calls.parse(text)
        return (content or None, calls) if calls else (text, [])


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def message_calls(calls: list[ToolCall]) -> list[dict]:
    return [{"id": call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]


@dataclass
class ToolStream:
    """One streamed choice under tools: the deltas to send as its text arrives, so the
    openai SDK assembles the same message as the whole answer's. A named function streams
    its arguments as they come; "auto" streams content up to a <tool_call> (holding back
    what could begin one); calls otherwise go out whole when the choice ends."""

    use: ToolUse
    text: str = ""
    sent: int = 0               # characters of text already sent (as content or arguments)
    calling: bool = False       # auto: a <tool_call> began; the rest waits for the end
    started: bool = False       # named: the call's id and name went out
    named_id: str = field(default_factory=call_id)

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        if self.use.mode == "named":
            deltas = [] if self.started else [{"tool_calls": [{
                "index": 0, "id": self.named_id, "type": "function",
                "function": {"name": self.use.name, "arguments": ""}}]}]
            self.started = True
            if piece:
                deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            self.sent = len(self.text)
            return deltas
        if self.use.mode == "required" or self.calling:
            return []
        upto = len(self.text) - (tool_calls.held_back(self.text) if self.use.mode == "auto" else 0)
        at = self.text.find(tool_calls.OPEN, self.sent) if self.use.mode == "auto" else -1
        if at >= 0:
            upto, self.calling = at, True
        return self._content(upto)

    def finish(self, finish: FinishReason) -> tuple[list[dict], bool]:
        """The choice's last deltas, and whether it ended in tool calls."""
        if self.use.mode == "named":
            return [], finish is FinishReason.STOP
        content, calls = self.use.answer(self.text, finish)
        if not calls:
            return self._content(len(self.text)), False
        return [{"tool_calls": [{"index": i, **call}]} for i, call in enumerate(message_calls(calls))], True

    def _content(self, upto: int) -> list[dict]:
        if upto <= self.sent:
            return []
        piece, self.sent = self.text[self.sent:upto], upto
        return [{"content": piece}]
