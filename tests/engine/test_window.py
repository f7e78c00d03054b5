"""The one window rule (prompt.fit_request): the model's window or the API's smaller one,
and an API's default output cap when the caller asks for no length."""

from __future__ import annotations

import pytest

from wharf.engine.prompt import fit_request
from wharf.engine.types import GenerationRequest, SamplingParams
from wharf.errors import ContextLengthExceeded, InvalidParam


def _req(max_tokens=None, window=None, default=None) -> GenerationRequest:
    return GenerationRequest(model="m", prompt="x", sampling=SamplingParams(max_tokens=max_tokens), window=window,
                             default_max_tokens=default)


@pytest.mark.parametrize("req,prompt,expected", [
    (_req(), 100, (3996, False)),                          # the model's window leaves 3996 of 4096
    (_req(window=2048), 100, (1948, False)),               # WeLM: its own 2048
    (_req(window=8192), 100, (3996, False)),               # an API window above the model's: the model's
    (_req(default=1024), 100, (1024, False)),              # Qianfan/SenseNova: 1024 ...
    (_req(default=1024), 3500, (596, True)),               # ... or what is left, reported as cut
    (_req(max_tokens=50, default=1024), 100, (50, False)), # asked for: the cap does not apply
])
def test_fit(req, prompt, expected):
    assert fit_request(req, prompt, 4096, "prompt") == expected


def test_refusals_name_the_field():
    with pytest.raises(ContextLengthExceeded) as err:
        fit_request(_req(max_tokens=1949, window=2048), 100, 4096, "prompt")
    assert err.value.param == "max_tokens" and "2048" in err.value.message
    with pytest.raises(ContextLengthExceeded) as err:
        fit_request(_req(default=1024), 4096, 4096, "messages")
    assert err.value.param == "messages"
    with pytest.raises(InvalidParam):
        fit_request(_req(max_tokens=0), 10, 4096, "prompt")
    # An estimated prompt (no tokenizer) lets the engine behind judge.
    assert fit_request(_req(max_tokens=5000), 100, 4096, "prompt", exact=False) == (5000, False)
