"""The optimiser step in a real DeepSpeed engine (CPU, gloo): a non-finite gradient skips the
update and leaves the weights as they were; a finite one is applied."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.config.schema import RunConfig
from grpo_cli.train import engine as eng
from tests.helpers import tiny_engine


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_the_reference_engine_is_frozen_and_unpartitioned_below_zero3(stage: int) -> None:
    """The KL reference: no parameter takes gradients; outside ZeRO-3 no partitioning (a
    frozen copy gains nothing from ZeRO 1-2), at ZeRO-3 every tensor sharded like the
    policy's."""
    import torch

    eng.init_distributed()
    cfg = RunConfig()
    cfg.trainer.zero_stage = stage
    cfg.trainer.prompts_per_step, cfg.rollout.n, cfg.trainer.micro_batch_size = 1, 2, 2
    # every tensor above 0 elements is partitioned at ZeRO-3 (DeepSpeed keeps small ones whole)
    cfg.trainer.deepspeed = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    ref = eng.make_reference_engine(model, eng.ds_config(cfg, 1))
    params = list(ref.module.parameters())
    assert not any(p.requires_grad for p in params)
    assert ref.zero_optimization_stage() == (3 if stage == 3 else 0)
    # ZeRO-3: each tensor is a partitioned stand-in (no local elements) for ds_numel of them
    sharded = [hasattr(p, "ds_numel") and p.numel() == 0 for p in params]
    assert sharded == [stage == 3] * 4
    if stage == 3:
        assert [p.ds_numel for p in params] == [16, 4, 4, 1]


@pytest.mark.parametrize("stage", [0, 2])
def test_non_finite_gradients_skip_the_update(stage: int) -> None:
    engine = tiny_engine(stage, lr=0.1, hidden=4)
    x = torch.randn(2, 4)

    def weights() -> list[torch.Tensor]:
        return [p.detach().clone() for p in engine.module.parameters()]

    before = weights()
    engine.backward(engine(x).sum() * float("nan"), scale_wrt_gas=False)
    assert eng.optimizer_step(engine) is True
    assert all(torch.equal(a, b) for a, b in zip(before, weights(), strict=True))

    engine.backward(engine(x).sum(), scale_wrt_gas=False)
    assert eng.optimizer_step(engine) is False
    after = weights()
    assert all(torch.isfinite(w).all() for w in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_bf16_gradients_accumulate_in_fp32(stage: int) -> None:
    """64 micro-batches of one update in bf16: gradient 1 from the first, 1/512 from each
    other. Summed in bf16 every 1/512 is lost (bf16's spacing at 1 is 1/128) and the update
    sees 1.0; summed in fp32, as the project configures DeepSpeed, it sees 1 + 63/512, up to
    one bf16 rounding of the sum (DeepSpeed's reduce across ranks is in bf16 by default; its
    bf16 optimizer, stage 1, runs it even on one rank). AdamW with eps 1e6 makes the first
    update -lr * g / (g + 1e6), linear in g, read from the fp32 master weight (from 0)."""
    from deepspeed.utils import safe_get_full_fp32_param

    eng.init_distributed()
    cfg = RunConfig()
    cfg.model.dtype, cfg.trainer.zero_stage = "bfloat16", stage
    cfg.trainer.prompts_per_step, cfg.rollout.n, cfg.trainer.micro_batch_size = 1, 64, 1
    cfg.trainer.grad_clip, cfg.trainer.lr, cfg.trainer.adam_eps = 0.0, 1.0, 1e6
    config = eng.ds_config(cfg, 1)
    assert config["gradient_accumulation_steps"] == 64
    model = torch.nn.Linear(1, 1, bias=False).bfloat16()
    torch.nn.init.zeros_(model.weight)
    engine = eng.make_policy_engine(model, cfg, config)
    weight = next(engine.module.parameters())
    for i in range(64):
        scale = 1.0 if i == 0 else 1 / 512
        loss = engine(torch.ones(1, 1, dtype=torch.bfloat16)).float().sum() * scale
        engine.backward(loss, scale_wrt_gas=False)
        assert not eng.optimizer_step(engine)  # steps only at the end of the window
    master = safe_get_full_fp32_param(weight)
    assert master is not None and master.dtype == torch.float32
    assert -float(master.sum()) * 1e6 == pytest.approx(1 + 63 / 512, rel=2**-8)
