"""A request's prompt as every engine sees it: the chat rendered by the model's template,
its tokens counted (exactly with a tokenizer, estimated without one), and the one window
rule that says how many tokens may be generated. The embedded engine, vLLM and upstream
engines all prepare requests here, so a dialect gets the same answer from each."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from wharf.engine import tool_calls
from wharf.engine.types import GenerationRequest
from wharf.errors import ContextLengthExceeded, InvalidParam


@dataclass
class PreparedRequest:
    request: GenerationRequest
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    # The prompt's token ids; None where there is no local tokenizer and prompt_tokens is
    # an estimate (an upstream engine counts for itself).
    prompt_ids: list[int] | None = None
    clamped: bool = False      # the API's default max tokens was cut to what the window leaves
    grammar: object = None     # the compiled grammar of request.structured, if any

    @property
    def exact(self) -> bool:
        return self.prompt_ids is not None


def fit_window(prompt_tokens: int, max_tokens: int | None, window: int, prompt_param: str, *,
               exact: bool = True) -> int:
    """The number of tokens to generate, or the error that says why the request does not
    fit. None means "whatever the window leaves". With `exact` off (estimated prompt
    counts) an over-long request is let through for the engine behind to judge."""
    if max_tokens is None:
        max_tokens = window - prompt_tokens
        if max_tokens < 1:
            if not exact:
                return 1
            raise ContextLengthExceeded(
                f"This model's maximum context length is {window} tokens; the {prompt_param} "
                f"alone has {prompt_tokens} tokens.", param=prompt_param)
    elif max_tokens < 1:
        raise InvalidParam("max_tokens must be at least 1", param="max_tokens")
    elif exact and prompt_tokens + max_tokens > window:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_param}, {max_tokens} "
            f"in the completion). Please reduce the length of the {prompt_param} or completion.",
            param="max_tokens")
    return max_tokens


def fit_request(request: GenerationRequest, prompt_tokens: int, model_window: int, prompt_param: str, *,
                exact: bool = True) -> tuple[int, bool]:
    """(tokens to generate, whether the window cut the API's default) for a request: the
    one window rule for every engine and dialect (fit_window, in the smaller of the
    model's and the API's windows, then the API's default cap when none was asked)."""
    window = min(model_window, request.window or model_window)
    asked = request.sampling.max_tokens
    max_tokens = fit_window(prompt_tokens, asked, window, prompt_param, exact=exact)
    cap = request.default_max_tokens
    if asked is not None or cap is None:
        return max_tokens, False
    return min(max_tokens, cap), max_tokens < cap


@functools.cache
def _longest_token_chars(tokenizer) -> int:
    """How many characters one token of this vocabulary can stand for, at most: its
    spelling in the vocabulary (byte-level or SentencePiece, added tokens too) is never
    shorter than the text it decodes to."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def tokenize_bounded(tokenizer, text: str, window: int, *, special: bool = True) -> list[int]:
    """Token ids of `text`, refusing at once a text too long for any tokenization of it
    to fit `window` tokens: a multi-megabyte prompt costs a length check, not seconds of
    tokenizer time (with the GIL held) before the same refusal."""
    limit = window * _longest_token_chars(tokenizer)
    if len(text) > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {window} tokens; a prompt of {len(text)} characters "
            f"cannot fit it (at most {limit} characters can).", param="prompt")
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def estimate_tokens(text: str) -> int:
    """A rough token count for a tokenizer we do not have: ~4 ASCII characters per token,
    one token per other character (CJK text is close to that)."""
    ascii_chars = len(text.encode("ascii", "ignore"))      # C speed: prompts may be megabytes
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def render_with_tools(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """A chat as the model's template renders it, with the generation prompt: tools and
    earlier tool calls by the template itself where it knows them, else in Hermes' form
    (wharf/engine/tool_calls.py); a plain transcript for models without a template."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    native = tool_calls.template_renders_tools(template)
    messages = tool_calls.for_template(messages, tools, native=native)
    if not template:     # base models (Pythia) and upstreams without a local tokenizer
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
    extra = {"tools": tools} if native and tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)


def prepare_prompt(request: GenerationRequest, tokenizer, window: int) -> PreparedRequest:
    """Render, count and fit a request in a model of `window` tokens; raises
    ContextLengthExceeded / InvalidParam. Without a tokenizer (an upstream that counts
    for itself) the chat is estimated as its contents plus a few tokens per message for
    the template the upstream applies, and an over-long one is left to the upstream."""
    if request.messages is not None:
        text, param = render_with_tools(tokenizer, request.messages, request.tools), "messages"
        if tokenizer is None:
            count = sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in request.messages) + 3
            ids = None
        else:
            ids = tokenize_bounded(tokenizer, text, window, special=False)
    else:
        text, param = request.prompt or "", "prompt"
        if tokenizer is None:
            count, ids = estimate_tokens(text), None
        else:
            ids = tokenize_bounded(tokenizer, text, window)
    if ids is not None:
        if not ids:      # an empty prompt still needs one position to start from
            start = tokenizer.bos_token_id
            ids = [start if start is not None else tokenizer.eos_token_id]
        count = len(ids)
    count = max(count, 1)
    max_tokens, clamped = fit_request(request, count, window, param, exact=ids is not None)
    return PreparedRequest(request=request, prompt_text=text, prompt_tokens=count, max_tokens=max_tokens,
                           prompt_ids=ids, clamped=clamped)


class PromptSide:
    """What every engine answers the same way from its `info` and `tokenizer`: the window,
    the chat rendering, tokenizing and `prepare` (prepare_prompt). Engines subclass it."""

    info: object
    tokenizer: object

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return render_with_tools(self.tokenizer, messages, tools)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise InvalidParam("this model has no local tokenizer (an upstream engine without one; "
                               "set WHARF_UPSTREAM_TOKENIZER)", param="model")
        return tokenize_bounded(self.tokenizer, text, self.context_length, special=special)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        return prepare_prompt(request, self.tokenizer, self.context_length)
