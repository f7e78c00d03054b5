"""The canonical request every dialect is translated into, and what the engine streams back."""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass, field

from wharf.errors import InvalidParam

# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): 1/T overflows float32 long
# before T reaches 0, and a tiny positive T rounds to 0 in float32 (1e-38, 1e-300).
SAMPLING_EPS = 1e-5

# What the engine can compute without infinities in float32, whatever a dialect allows:
# a repetition penalty scales logits by at most 100x either way; additive penalties move
# a logit by at most 100 per generated occurrence.
ENGINE_RANGES = {
    "temperature": (0.0, 100.0),
    "top_p": (0.0, 1.0),
    "repetition_penalty": (0.01, 100.0),
    "presence_penalty": (-100.0, 100.0),
    "frequency_penalty": (-100.0, 100.0),
}


class FinishReason(str, enum.Enum):
    STOP = "stop"              # EOS, a stop token or a stop string
    LENGTH = "length"          # max_tokens reached
    CANCELLED = "cancelled"    # the caller went away
    CONTENT = "content_filter" # output safety cut the stream (set by the platform, not the engine)
    ERROR = "error"


@dataclass
class SamplingParams:
    max_tokens: int | None = 16     # None: whatever the context window leaves
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = off
    repetition_penalty: float = 1.0   # HF-style, over prompt + output
    presence_penalty: float = 0.0     # OpenAI-style, over output
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None       # None: off; k >= 0: chosen token + top k
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def check(self) -> "SamplingParams":
        """The one engine-side check every backend relies on, after a dialect's own ranges:
        each number finite and within ENGINE_RANGES (raises InvalidParam naming it), and
        every way of asking for greedy decoding (temperature below SAMPLING_EPS, top_p
        below it, top_k 1) written as temperature 0 with top_p/top_k off, so no backend
        divides by a vanishing temperature or sees a top_p of 0 it would refuse."""
        for name, (low, high) in ENGINE_RANGES.items():
            value = getattr(self, name)
            if not math.isfinite(value) or not low <= value <= high:
                raise InvalidParam(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}", param=name)
        if self.top_k < 0:
            raise InvalidParam("top_k must be 0 (off) or a positive integer", param="top_k")
        if self.n < 1:
            raise InvalidParam("n must be at least 1", param="n")
        if self.temperature < SAMPLING_EPS or self.top_p < SAMPLING_EPS or self.top_k == 1:
            self.temperature, self.top_p, self.top_k = 0.0, 1.0, 0
        return self


@dataclass
class StructuredOutput:
    """Output constrained to a grammar: here, JSON that validates against a JSON Schema
    (a JSON object with no other rule is {"type": "object"})."""

    json_schema: dict
    param: str = "response_format"   # the caller's name for it, for errors that name it


@dataclass
class GenerationRequest:
    """Exactly one of `prompt` (raw text) or `messages` (chat, rendered by the model's template)."""

    model: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: list[dict] | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None     # time.monotonic() after which the request times out
    # Who the request is for, opaque to the engine: requests of one tenant share one fair
    # share of the batch and one prefix-cache namespace (vLLM's cache_salt).
    tenant: str = ""
    # The API's own limits, where it has them: a window for prompt + output tokens below
    # the model's (WeLM: 2048), and, when max_tokens is None, at most this many tokens
    # rather than all the window leaves (Qianfan, SenseNova: 1024).
    window: int | None = None
    default_max_tokens: int | None = None
    structured: StructuredOutput | None = None
    # Function tools the chat template shows the model (OpenAI's `tools` entries).
    tools: list[dict] | None = None


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    top: list[tuple[str, int, float]] = field(default_factory=list)  # (token, id, logprob)


@dataclass
class Chunk:
    """A piece of one choice's output. Text is always whole UTF-8 characters and never
    contains (part of) a stop string; concatenated chunks equal the final text."""

    index: int                                  # which of the n choices
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0                      # set on every chunk
    completion_tokens: int = 0                  # tokens generated for this choice so far


@dataclass
class ModelInfo:
    name: str                 # registered name
    identity: str             # what it really is (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct")
    path: str
    backend: str
    context_length: int
    dtype: str
    aliases: list[str] = field(default_factory=list)
    quantize: str = "none"    # "int8": int8 weight matmuls (wharf/engine/runners/int8.py)


@dataclass
class UpstreamStats:
    """One replica behind the upstream backend; counts are this gateway's, all models."""

    url: str
    healthy: bool
    in_flight: int = 0
    requests: int = 0        # attempts sent to it (a failed-over request counts on each)
    failures: int = 0        # attempts it failed: unreachable, 5xx/429, broken stream
    models: list[str] = field(default_factory=list)


@dataclass
class EngineStats:
    waiting: int = 0
    running: int = 0
    max_batch_size: int = 0
    generated_tokens: int = 0
    tokens_per_second: float = 0.0   # recent decode throughput
    prefix_cache_hits: int = 0       # requests whose prompt began with a cached prefix
    prefix_cache_tokens: int = 0     # prompt tokens not prefilled thanks to it
    upstreams: list[UpstreamStats] | None = None   # upstream backend only: its replicas
    kv_cache_usage: float | None = None   # vLLM backend only: share of its KV cache in use (0-1)
