"""Wharf in process, for dialect and policy tests that do not need the real model: the app
`wharf serve` builds (create_app: every dialect, the pipeline, the platform on a fresh
SQLite store) over the real embedded engine (scheduler, sampler, detokenizer, stops, n,
logprobs) whose model runner is a script instead of weights. Requests go through
starlette's TestClient (httpx over the ASGI app, streaming included): no port, no
process, no 1.5 GB model; the real tokenizer, so prompts count as they do in production.

What the script says: every prompt is answered with REPLY's tokens, then EOS, greedy or
not (the scripted token leads every other by SCRIPT_MARGIN logits)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import unittest.mock
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.conftest import account_with_key
from wharf.engine.runners.base import Fill

REPLY = "Paris is the capital of France. 巴黎是法国的首都。"
SCRIPT_MARGIN = 30.0


class ScriptedRunner:
    """A ModelRunner (runners/base.py) that reads no weights: the logits after a slot's
    k-th generated token put the script's (k+1)-th token first."""

    def __init__(self, script: list[int], vocab_size: int, max_slots: int = 16, max_len: int = 2048):
        self.script, self.vocab_size = script, vocab_size
        self.max_slots, self.max_len = max_slots, max_len
        self.prompt_end: dict[int, int] = {}      # slot -> position of its prompt's last token

    def _logits(self, generated: int) -> torch.Tensor:
        row = torch.full((self.vocab_size,), -SCRIPT_MARGIN)
        row[self.script[min(generated, len(self.script) - 1)]] = 0.0
        return row

    def step(self, slots: list[int], token_ids: list[int], positions: list[int],
             fills: list[Fill]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        fill_logits = []
        for f in fills:
            end = f.start + len(f.token_ids) - 1
            if f.logits:
                # A fill that ends a prompt (or recomputes a preempted sequence's tokens):
                # what was generated is whatever lies past the prompt's end.
                self.prompt_end.setdefault(f.slot, end)
            fill_logits.append(self._logits(end - self.prompt_end.get(f.slot, end)) if f.logits else None)
        decode = (torch.stack([self._logits(p - self.prompt_end[s]) for s, p in zip(slots, positions)])
                  if slots else None)
        return decode, fill_logits

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self.prompt_end[dst] = self.prompt_end.get(src, length - 1)

    def release(self, slot: int) -> None:
        self.prompt_end.pop(slot, None)


def scripted_engine(tokenizer, name: str, reply: str = REPLY, *, context_length: int = 2048,
                    max_slots: int = 16, max_queue: int = 64):
    from wharf.engine.engine import LocalEngine
    from wharf.engine.types import ModelInfo

    eos = tokenizer.eos_token_id
    script = tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos]
    runner = ScriptedRunner(script, len(tokenizer), max_slots=max_slots, max_len=context_length)
    info = ModelInfo(name=name, identity="scripted", path="", backend="scripted", context_length=context_length,
                     dtype="float32")
    return LocalEngine(runner, tokenizer, info, eos_ids={eos}, max_queue=max_queue, prefill_chunk=512)


@dataclass
class InProcessServer:
    """What tests use of a LiveServer (tests/conftest.py), without the process: `client`
    speaks HTTP to the app, `platform` is the store it serves from."""

    client: object          # starlette.testclient.TestClient
    platform: object
    app: object
    data_dir: Path

    def account(self, name: str, **limits):
        return account_with_key(self.platform, name, **limits)


def tokenizer_of_the_embedded_model(model_cache: Path):
    from transformers import AutoTokenizer

    from wharf.engine.loader import embedded_model_path, model_folder

    return AutoTokenizer.from_pretrained(model_folder(embedded_model_path(), model_cache))


def in_process_server(model_cache: Path, model: str, *, reply: str = REPLY, env: dict | None = None):
    """A context manager: the app with its lifespan running, and its store; closed after."""
    from starlette.testclient import TestClient

    from wharf.api.app import create_app
    from wharf.config import Settings
    from wharf.engine.registry import ModelRegistry
    from wharf.platform.core import Platform

    @contextlib.contextmanager
    def serve():
        data_dir = Path(tempfile.mkdtemp(prefix="wharf-inproc-"))
        with unittest.mock.patch.dict(os.environ, {"WHARF_DATA_DIR": str(data_dir), **(env or {})}):
            settings = Settings()
            registry = ModelRegistry()
            registry.add(scripted_engine(tokenizer_of_the_embedded_model(model_cache), model, reply))
            platform = Platform.open(settings, model_exists=lambda name: name in registry.names())
            app = create_app(settings, registry, platform)
            try:
                with TestClient(app, base_url="http://wharf.test") as client:
                    yield InProcessServer(client=client, platform=platform, app=app, data_dir=data_dir)
            finally:
                registry.shutdown()
                platform.close()
    return serve()
