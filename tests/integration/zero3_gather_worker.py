"""Worker for test_weights.py, started on 2 CPU ranks by torchrun: ZeRO-3 shards the toy VL
model; `iter_full_params` must give every rank each full tensor, one at a time."""

from __future__ import annotations

import json
import sys

import torch
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
from safetensors.torch import load_file
from transformers.integrations import HfDeepSpeedConfig

from grpo_cli.config.schema import ModelConfig, RunConfig
from grpo_cli.models.load import load_causal_lm
from grpo_cli.train import engine as eng
from grpo_cli.train.weights import iter_full_params


def main(model_dir: str, out: str) -> None:
    d = eng.init_distributed()
    cfg = RunConfig()
    cfg.trainer.zero_stage, cfg.trainer.prompts_per_step = 3, 2
    cfg.rollout.n, cfg.trainer.micro_batch_size = 2, 2
    ds_cfg = eng.ds_config(cfg, d.world)
    keep = HfDeepSpeedConfig(ds_cfg)  # partition while loading  # noqa: F841
    engine = eng.make_policy_engine(load_causal_lm(model_dir, ModelConfig(path=model_dir)),
                                    cfg, ds_cfg)
    params = list(engine.module.parameters())
    local = sum(p.ds_tensor.numel() for p in params)  # this rank's shard
    saved = load_file(f"{model_dir}/model.safetensors")
    seen, equal, most_gathered = [], True, 0
    for name, tensor in iter_full_params(engine.module, 3):
        gathered = [p for p in params if p.ds_status != ZeroParamStatus.NOT_AVAILABLE]
        most_gathered = max(most_gathered, len(gathered))
        equal &= torch.equal(tensor, saved[name])
        seen.append(name)
    after = sum(p.ds_status != ZeroParamStatus.NOT_AVAILABLE for p in params)
    total = sum(p.ds_numel for p in params)
    json.dump({"names": seen, "equal": bool(equal), "most_gathered": most_gathered,
               "gathered_after": int(after), "local": local, "total": total,
               "saved": sorted(saved)}, open(f"{out}.{d.rank}.json", "w"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # tear gloo down before exit


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
