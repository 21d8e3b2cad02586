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
    """The KL reference: no parameter takes gradients, and outside ZeRO-3 no partitioning
    (a frozen copy gains nothing from ZeRO 1-2)."""
    import torch

    eng.init_distributed()
    cfg = RunConfig()
    cfg.trainer.zero_stage = stage
    cfg.trainer.prompts_per_step, cfg.rollout.n, cfg.trainer.micro_batch_size = 1, 2, 2
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    ref = eng.make_reference_engine(model, eng.ds_config(cfg, 1))
    assert not any(p.requires_grad for p in ref.module.parameters())
    assert ref.zero_optimization_stage() == (3 if stage == 3 else 0)


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
