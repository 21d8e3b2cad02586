"""The embedded toy model: a ~0.8M-parameter Qwen2 that adds numbers, built locally.

Everything is made here, offline and deterministically: a byte-level tokenizer with
Qwen2's pipeline (``tokenizers``, wrapped as a ``PreTrainedTokenizerFast``), a
``Qwen2ForCausalLM`` from a ``Qwen2Config``, and a supervised warm-up (2,500 steps of 16
reference solutions from :mod:`grpo_cli.data.toy`). The result is a competent but imperfect
policy, the RL starting point the project needs: sampled at temperature 1 under a generous
cap it is right about half the time (56% on 256 held-out problems), and its lengths span
~5-115 tokens (p10 5, p50 37, p90 89), so a 32-token cap truncates more than half of its
answers and a 160-token cap none. ``grpo toy build`` rebuilds it bit for bit (~3 minutes on
2 cores); the saved directory is a plain HF checkpoint, so transformers, TRL and vLLM load
it as is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli.config.schema import TOY_CONTEXT
from grpo_cli.data.toy import STYLES, generate_rows, style_of
from grpo_cli.models.cache import build_once, cache_root
from grpo_cli.models.sft import Example, length_batches, lr_at, pad_batch, train_step

TOY_MODEL_DIR: Path = Path(__file__).resolve().parents[1] / "assets" / "toy-qwen2"
PAD, EOS, UNK, ANSWER_OPEN, ANSWER_CLOSE = "<pad>", "<eos>", "<unk>", "<answer>", "</answer>"
# Prompt = the user's text plus a newline; the assistant's reply ends with EOS.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ message['content'] }}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
)
MAX_POSITIONS = TOY_CONTEXT
# Qwen2's pre-tokenizer split (transformers' qwen2 tokenization module).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
HELD_OUT_SEED = 1_000_003  # eval prompts use seed + this, a stream the warm-up never draws
# Warm-up schedule. Fixed in steps (not time) so the build is deterministic.
WARMUP_STEPS = 2500
WARMUP_BATCH = 16  # small batches: progress here is limited by steps, not by examples
WARMUP_LR = 3e-3
# Init std 0.1 instead of Qwen2's 0.02 (meant for width 4096): at width 128 the default makes
# attention start out flat and the copy heads this task needs form several times later.
INIT_STD = 0.1
BUILD_THREADS = 2
CALIBRATION_STEPS = 100  # see calibrate_style_prior
CALIBRATION_TOKENS = 8  # solution tokens kept: the first line's style choices
CALIBRATION_SEED = 7_919
# Architecture: ~0.8M parameters; head_dim 32 keeps vLLM's attention kernels happy.
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 128, 4, 4, 2, 384


def _byte_symbols() -> list[str]:
    """GPT-2/Qwen byte-level alphabet in byte order (byte 0x20 ' ' -> 'Ġ', 0x0A -> 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _vocab() -> list[str]:
    """Specials first (pad=0, eos=1, unk=2, <answer>=3, </answer>=4), then the 256 bytes."""
    return [PAD, EOS, UNK, ANSWER_OPEN, ANSWER_CLOSE, *_byte_symbols()]


def build_tokenizer() -> Any:
    """Byte-level tokenizer with Qwen2's exact pipeline but no merges: one token per byte.

    Qwen2's pipeline (NFC, Qwen's split regex, ByteLevel) because transformers 5 always
    loads a ``qwen2`` checkpoint's tokenizer as ``Qwen2Tokenizer``, which imposes it; with
    the same pipeline in ``tokenizer.json`` every loader (transformers 4/5, vLLM) agrees.
    Byte-level means no input is unknown (any UTF-8 text encodes); digits are single tokens
    as in real Qwen models. ``<answer>`` tags are single, *non-special* tokens so that
    ``decode(..., skip_special_tokens=True)`` (what the trainer grades) keeps them.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_vocab())}
    core = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False,
                         byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t in (PAD, EOS, UNK)])
    core.add_tokens([AddedToken(t, special=False, normalized=False)
                     for t in (ANSWER_OPEN, ANSWER_CLOSE)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS, chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: Any) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, use_cache=True, dtype="float32", initializer_range=INIT_STD,
    )


def prompt_text(tokenizer: Any, problem: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], add_generation_prompt=True, tokenize=False
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _examples(tokenizer: Any, rows: list[dict[str, str]]) -> list[Example]:
    """(prompt + solution + EOS ids, prompt length) per row."""
    out = []
    for row in rows:
        prompt = _encode(tokenizer, prompt_text(tokenizer, row["problem"]))
        answer = _encode(tokenizer, row["solution"]) + [tokenizer.eos_token_id]
        out.append((prompt + answer, len(prompt)))
    return out


def calibrate_style_prior(model: Any, tokenizer: Any, optim: torch.optim.Optimizer, seed: int,
                          steps: int = CALIBRATION_STEPS, batch_size: int = 32,
                          lr: float = WARMUP_LR / 10) -> float:
    """Re-fit the opening tokens (where the style is chosen) on unbucketed batches.

    Length buckets are nearly single-style, so the last few buckets of the warm-up skew the
    style mix the model samples (seen: 28% ``jump`` for 10% in the data). Training on random
    batches cut to the prompt plus the first few solution tokens is cheap and restores it.
    """
    rows = generate_rows("add", size=steps * batch_size, seed=seed + CALIBRATION_SEED)
    cut = [(ids[: start + CALIBRATION_TOKENS], start)
           for ids, start in _examples(tokenizer, rows)]
    for group in optim.param_groups:
        group["lr"] = lr
    model.train()
    pad = tokenizer.pad_token_id
    losses = [train_step(model, optim, *pad_batch(cut[i : i + batch_size], pad))
              for i in range(0, len(cut), batch_size)]
    model.eval()
    return float(np.mean(losses[-10:]))


def warm_up(model: Any, tokenizer: Any, seed: int, steps: int = WARMUP_STEPS,
            batch_size: int = WARMUP_BATCH, lr: float = WARMUP_LR,
            log: Callable[[str], None] = print, calibration_steps: int = CALIBRATION_STEPS,
            ) -> float:
    """Supervised fine-tuning on reference solutions (loss on solution + EOS only), then a
    short style-prior calibration; returns the mean training loss of the last 10% of steps."""
    rows = generate_rows("add", size=steps * batch_size, seed=seed)
    batches = length_batches(_examples(tokenizer, rows), batch_size,
                             f"grpo-toy-batches:{seed}")
    optim = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    tail: list[float] = []
    for step, batch in enumerate(batches):
        for group in optim.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = train_step(model, optim, *pad_batch(batch, tokenizer.pad_token_id))
        if step >= steps - max(1, steps // 10):
            tail.append(loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"warm-up step {step}/{steps} loss {loss:.4f}")
    if calibration_steps:
        cal = calibrate_style_prior(model, tokenizer, optim, seed, steps=calibration_steps,
                                    lr=lr / 10)
        log(f"style-prior calibration: {calibration_steps} steps, loss {cal:.4f}")
    model.eval()
    return float(np.mean(tail))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_tokenizer(tokenizer: Any, out_dir: Path) -> None:
    """Save, naming the class ``PreTrainedTokenizerFast`` so transformers 4.x/vLLM load it too."""
    tokenizer.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _add_legacy_rope_theta(path: Path) -> None:
    """Also write ``rope_theta`` at top level, where transformers 4.x (and vLLM on it) read it."""
    cfg = json.loads(path.read_text())
    cfg.setdefault("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_toy_model(out_dir: Path, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build tokenizer + model + warm-up into ``out_dir`` (replaced); returns build stats.

    Deterministic for ``seed`` on a given CPU/torch build: seeds are fixed and the thread
    count is pinned during the build (float reductions depend on it).
    """
    from transformers import GenerationConfig, Qwen2ForCausalLM

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        torch.manual_seed(seed)
        tokenizer = build_tokenizer()
        model = Qwen2ForCausalLM(build_config(tokenizer))
        params = sum(p.numel() for p in model.parameters())
        log(f"toy model: {params:,} parameters, vocab {len(tokenizer)}")
        loss = warm_up(model, tokenizer, seed=seed, log=log)
    finally:
        torch.set_num_threads(threads)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        (out_dir / stale).unlink(missing_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    _add_legacy_rope_theta(out_dir / "config.json")
    save_tokenizer(tokenizer, out_dir)
    stats = {
        "seed": seed,
        "parameters": params,
        "vocab_size": len(tokenizer),
        "warmup_steps": WARMUP_STEPS,
        "warmup_batch": WARMUP_BATCH,
        "final_loss": round(loss, 4),
        "build_s": round(time.perf_counter() - start, 1),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    (out_dir / "toy_build.json").write_text(json.dumps(stats, indent=2) + "\n")
    stats["dir_bytes"] = _dir_bytes(out_dir)
    log(f"saved {out_dir} ({stats['dir_bytes'] / 1e6:.2f} MB) in {stats['build_s']} s")
    return stats


def _has_model(path: Path) -> bool:
    return all((path / f).is_file() for f in ("config.json", "model.safetensors",
                                               "tokenizer.json"))


def toy_cache_dir() -> Path:
    return cache_root() / "toy-qwen2"


def ensure_toy_model(log: Callable[[str], None] = print) -> Path:
    """The committed toy model dir; if it is missing (e.g. a stripped install), build it once
    into the user cache (``$GRPO_CACHE_DIR/toy-qwen2``, default ``~/.cache/grpo-cli/...``)."""
    if _has_model(TOY_MODEL_DIR):
        return TOY_MODEL_DIR
    target = toy_cache_dir()
    if not _has_model(target):
        log(f"toy model not found; building it into {target} (a few minutes, once)")
    return build_once(target, lambda tmp: build_toy_model(tmp, log=log), _has_model)


def _grade(text: str, answer: str) -> bool:
    """Exact match of the last ``<answer>`` tag's content."""
    if ANSWER_CLOSE not in text:
        return False
    head = text.rsplit(ANSWER_CLOSE, 1)[0]
    return ANSWER_OPEN in head and head.rsplit(ANSWER_OPEN, 1)[1].strip() == answer.strip()


@torch.no_grad()
def sample_toy_model(model: Any, tokenizer: Any, problems: list[str], max_new_tokens: int,
                     temperature: float = 1.0, n: int = 1,
                     batch_size: int = 256) -> list[tuple[list[int], bool]]:
    """Sample ``n`` completions per problem: (token ids up to and incl. EOS, truncated).

    Batched ``generate`` with left padding and KV cache; sampling from the full softmax
    (top_k=0, top_p=1), so no generation defaults change the distribution.
    """
    from transformers import GenerationConfig

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                           max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                           use_cache=True)
    prompts = [prompt_text(tokenizer, p) for p in problems for _ in range(n)]
    out: list[tuple[list[int], bool]] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], add_special_tokens=False,
                        padding=True, return_tensors="pt")
        seqs = model.generate(**enc, generation_config=gen)[:, enc["input_ids"].shape[1]:]
        for row in seqs.tolist():
            if eos in row:
                out.append((row[: row.index(eos) + 1], False))
            else:
                out.append((row, True))
    return out


def evaluate_toy_model(model_dir: Path, num_prompts: int, max_new_tokens: int,
                       temperature: float = 1.0, seed: int = 0, n: int = 1,
                       caps: tuple[int, ...] = ()) -> dict[str, Any]:
    """Accuracy, length quantiles and truncation share of samples on held-out toy prompts.

    Lengths count generated tokens including EOS (no padding); ``truncated_share`` is the
    share with no EOS within ``max_new_tokens``. ``truncated_share_at[c]`` is the share a
    smaller cap ``c`` would have cut (length > c): the same draws, since sampling at cap c is
    the first c steps of sampling at ``max_new_tokens``. ``by_style`` splits the samples by the
    style the model chose (see :func:`grpo_cli.data.toy.style_of`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = generate_rows("add", size=num_prompts, seed=seed + HELD_OUT_SEED)
    torch.manual_seed(seed)
    samples = sample_toy_model(model, tokenizer, [r["problem"] for r in rows],
                               max_new_tokens, temperature=temperature, n=n)
    lengths = np.array([len(ids) for ids, _ in samples], dtype=float)
    truncated = np.array([t for _, t in samples], dtype=bool)
    texts = tokenizer.batch_decode([ids for ids, _ in samples], skip_special_tokens=True)
    answers = [rows[i // n]["answer"] for i in range(len(samples))]
    correct = np.array([_grade(t, a) for t, a in zip(texts, answers, strict=True)])
    styles = [style_of(t) for t in texts]
    by_style: dict[str, dict[str, float]] = {}
    for style in STYLES:
        mask = np.array([s == style for s in styles])
        if mask.any():
            by_style[style] = {
                "share": float(mask.mean()),
                "accuracy": float(correct[mask].mean()),
                "length_mean": float(lengths[mask].mean()),
            }
    p10, p50, p90, p99 = np.percentile(lengths, [10, 50, 90, 99])
    return {
        "samples": len(samples),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "accuracy": float(correct.mean()),
        "accuracy_terminated": float(correct[~truncated].mean()) if (~truncated).any() else 0.0,
        "truncated_share": float(truncated.mean()),
        "length_mean": float(lengths.mean()),
        "length_p10": float(p10),
        "length_p50": float(p50),
        "length_p90": float(p90),
        "length_p99": float(p99),
        "length_max": float(lengths.max()),
        "by_style": by_style,
        "truncated_share_at": {c: float((lengths > c).mean()) for c in caps},
    }
