"""Gradient checkpointing engages, and training mode keeps the sampler's log-probs.

transformers checkpoints a layer only in train mode; a policy kept in eval mode (for its
missing dropout) stored every activation whatever ``model.gradient_checkpointing`` said.
The policy now trains in train mode with every dropout rate set to 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from grpo_cli.config.schema import ModelConfig
from tests.helpers import random_model

ONE_STEP = ["trainer.steps=1", "trainer.prompts_per_step=4", "rollout.n=4", "max_len=32",
            "logger.wandb.mode=disabled", "logger.progress=false", "trainer.val_every=0",
            "data.toy_size=16", "trainer.micro_batch_size=16", "seed=3"]


def saved_bytes_per_forward(monkeypatch: pytest.MonkeyPatch, runs_dir: Path,
                            extra: list[str]) -> tuple[list[int], dict[str, Any]]:
    """Bytes autograd stores for backward during each training forward pass of one real
    step (a spy around the update's forward_logprobs), and the step's metrics."""
    from grpo_cli.startup import load_run_config
    from grpo_cli.train import update
    from grpo_cli.train.loop import train

    real = update.forward_logprobs
    sizes: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = real(*args, **kwargs)
        sizes.append(total)
        return out

    monkeypatch.setattr(update, "forward_logprobs", spy)
    cfg, resolved = load_run_config([*ONE_STEP, *extra, f"runs_dir={runs_dir}"])
    run = runs_dir / train(cfg, resolved)
    monkeypatch.undo()
    (metrics,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return sizes, metrics


def test_checkpointing_stores_a_fraction_of_the_activations(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    full, m_full = saved_bytes_per_forward(monkeypatch, tmp_path / "a", [])
    ckpt, m_ckpt = saved_bytes_per_forward(monkeypatch, tmp_path / "b",
                                           ["model.gradient_checkpointing=true"])
    assert len(full) == len(ckpt) == 1  # one micro-batch of 16
    assert ckpt[0] < 0.5 * full[0], (ckpt, full)
    # the same step: recomputing in backward changes memory, not the result
    for key in ("loss/pg", "policy/entropy", "rollout/logprob_diff", "length/mean"):
        assert m_ckpt[key] == pytest.approx(m_full[key], rel=1e-5), key


def model_with_dropout(tmp_path: Path, kind: str) -> Path:
    """A random-init model from a real config with dropout everywhere it can have it."""
    if kind == "qwen2":
        return random_model(tmp_path / kind, attention_dropout=0.5)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from grpo_cli.models.load import resolve_model_path

    # GPT-2's residual, embedding and attention dropout
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=261,
                                  resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    torch.manual_seed(0)
    out = tmp_path / kind
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_model_path("toy")).save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_train_mode_has_no_dropout(tmp_path: Path, kind: str) -> None:
    """A model loaded for training computes in train mode, checkpointed, what it computes
    in eval mode: the same logits twice (no random masks) and the same as eval's."""
    from grpo_cli.models.load import load_causal_lm

    model = load_causal_lm(str(model_with_dropout(tmp_path, kind)),
                           ModelConfig(gradient_checkpointing=True))
    ids = torch.randint(0, 261, (2, 12))
    model.train()
    first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    model.eval()
    with torch.no_grad():
        evaluated = model(input_ids=ids).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first.detach(), evaluated, rtol=1e-6, atol=1e-6)
