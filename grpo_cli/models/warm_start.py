"""The supervised warm start (``model.warm_start``): fine-tune the base model on worked
solutions once, cache the result, and start GRPO from it.

Reasoning RL on a small model usually starts this way (DeepSeek-R1's "cold start"): a model
that cannot yet reason in steps gives RL nothing long to keep or lose. The prompts are built
exactly as the run builds its own (``data.prompt_template``, the chat template,
``data.max_prompt_length``), so the warm start teaches the answer to the prompt GRPO will
ask. The checkpoint lands in ``$GRPO_CACHE_DIR/warm-start/<key>``, keyed by the base weights,
every ``model.warm_start`` value and the prompt settings: any change builds a new one, the same
config reuses it (sweep arms and ranks wait on a lock rather than build twice).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo_cli.config.schema import DataConfig, WarmStartConfig
from grpo_cli.errors import ConfigError
from grpo_cli.models.cache import build_once, cache_root
from grpo_cli.models.sft import Example, length_batches, lr_at, pad_batch, train_step

RECORD = "warm_start.json"  # written last into a built dir: its presence = complete
# Bump when the code changes what a given config builds: this recipe, or the rows a toy task
# generates (the key holds the config, not the rows); it invalidates old caches.
RECIPE_VERSION = 1
# The warm start draws rows from seed + this: a stream the run's own prompts (seed) and the
# validation probe (seed + 1_000_003) never use.
ROW_SEED_OFFSET = 2_000_029
BUILD_THREADS = 2  # pinned: float reductions, and so the weights, depend on the thread count
LOG_EVERY = 10


def _base_identity(base: Path) -> dict[str, Any]:
    """What identifies the base weights: the config's bytes and every weight file's size and
    name (hashing GBs of weights on every start would cost more than the runs it keys)."""
    config = base / "config.json"
    weights = sorted(base.glob("*.safetensors")) + sorted(base.glob("*.bin"))
    return {
        "path": str(base.resolve()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file()
        else None,
        "weights": [(w.name, w.stat().st_size) for w in weights],
    }


def cache_key(base: Path, warm: WarmStartConfig, data: DataConfig) -> str:
    """A digest of everything that shapes the warm-started weights."""
    payload = {
        "recipe": RECIPE_VERSION,
        "base": _base_identity(base),
        "warm_start": dataclasses.asdict(warm),
        "prompts": {k: getattr(data, k) for k in ("prompt_key", "prompt_template",
                                                   "max_prompt_length")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_examples(rows: list[dict], warm: WarmStartConfig, data: DataConfig,
                   tokenizer: Any) -> list[Example]:
    """(prompt ids + solution ids + EOS, prompt length) per row, the prompt built by the run's
    own :func:`~grpo_cli.data.datasets.build_prompts` (rows it drops are dropped here too)."""
    from grpo_cli.data.datasets import build_prompts

    prompts = build_prompts(rows, data, tokenizer, key="model.warm_start.data")
    examples = []
    for ids, row in zip(prompts.prompt_ids, prompts.rows, strict=True):
        solution = row.get(warm.solution_key)
        if not isinstance(solution, str) or not solution:
            raise ConfigError(f"model.warm_start.solution_key={warm.solution_key}: a row of "
                              f"model.warm_start.data={warm.data} has no solution text")
        answer = tokenizer(solution, add_special_tokens=False)["input_ids"]
        examples.append((list(ids) + answer + [tokenizer.eos_token_id], len(ids)))
    return examples


def fine_tune(model: Any, examples: list[Example], warm: WarmStartConfig, pad_id: int,
              log: Callable[[str], None]) -> list[float]:
    """``warm.steps`` AdamW steps over length-bucketed batches; returns each step's loss."""
    import torch

    optim = torch.optim.AdamW(model.parameters(), lr=warm.lr, betas=(0.9, 0.98),
                              weight_decay=0.0)
    batches = length_batches(examples, warm.batch_size, f"grpo-warm-start:{warm.seed}")
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step, batch in enumerate(batches[: warm.steps]):
        for group in optim.param_groups:
            group["lr"] = lr_at(step, warm.steps, warm.lr)
        losses.append(train_step(model, optim, *pad_batch(batch, pad_id)))
        if step % LOG_EVERY == 0 or step == warm.steps - 1:
            log(f"warm start: step {step + 1}/{warm.steps} loss {losses[-1]:.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    return losses


def build(base: Path, out: Path, warm: WarmStartConfig, data: DataConfig,
          log: Callable[[str], None]) -> None:
    """Fine-tune the base checkpoint and save model, tokenizer, generation config and record."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from grpo_cli.data.datasets import load_rows
    from grpo_cli.models.load import load_tokenizer, no_progress_bars

    assert warm.data is not None
    log(f"warm start: {warm.steps} supervised steps on {warm.data} into {out.parent} (once)")
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    # fork_rng: the run seeded torch before this; a run that builds the warm start must draw
    # the same numbers afterwards as one that finds it cached.
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(warm.seed)
            tokenizer = load_tokenizer(str(base))
            # a toy task is as long as asked: distinct rows for every step
            sized = dataclasses.replace(data, toy_size=warm.steps * warm.batch_size)
            rows = load_rows(warm.data, sized, seed=warm.seed + ROW_SEED_OFFSET,
                             key="model.warm_start.data")
            examples = build_examples(rows, warm, data, tokenizer)
            if len(examples) < warm.batch_size:
                raise ConfigError(f"model.warm_start.data={warm.data}: {len(examples)} usable "
                                  f"rows, fewer than model.warm_start.batch_size="
                                  f"{warm.batch_size}")
            # Passes over the rows until warm.steps batches exist (a file may be short).
            epochs = -(-warm.steps * warm.batch_size // len(examples))
            with no_progress_bars():
                model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            losses = fine_tune(model, examples * epochs, warm, tokenizer.pad_token_id, log)
    finally:
        torch.set_num_threads(threads)
    with no_progress_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    try:
        GenerationConfig.from_pretrained(base).save_pretrained(out)
    except OSError:  # the base has none: the run falls back to the tokenizer's EOS
        pass
    tail = losses[-max(1, len(losses) // 10):]
    (out / RECORD).write_text(json.dumps({
        "base": str(base), "warm_start": dataclasses.asdict(warm), "examples": len(examples),
        "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4),
        "build_s": round(time.perf_counter() - start, 1),
    }, indent=2) + "\n")


def _stderr(text: str) -> None:
    print(f"grpo: {text}", file=sys.stderr, flush=True)  # stdout ends with the run id


def ensure_warm_started(base: str, warm: WarmStartConfig, data: DataConfig,
                        log: Callable[[str], None] = _stderr) -> Path:
    """The warm-started checkpoint for ``base`` (a local HF dir), built now if not cached."""
    base_dir = Path(base)
    config = base_dir / "config.json"
    if not config.is_file():
        raise ConfigError(f"model.warm_start: the base model must be a local checkpoint or "
                          f"GGUF file, not a hub id ({base}); download it first")
    if "vision_config" in json.loads(config.read_text()):
        raise ConfigError(f"model.warm_start: text models only; {base} is a vision-language "
                          "model (set model.warm_start.data=null)")
    target = cache_root() / "warm-start" / cache_key(base_dir, warm, data)[:16]

    def done(d: Path) -> bool:
        return (d / RECORD).is_file()

    return build_once(target, lambda out: build(base_dir, out, warm, data, log), done)
