"""Worker for test_weights.py's tensor-parallel test, on 2 CPU ranks (torchrun): the two
ranks of one engine pool their requests and each keeps its own outputs."""

from __future__ import annotations

import json
import sys
import types

import torch.distributed as dist

from grpo_cli.rollout.base import RolloutRequest
from grpo_cli.rollout.vllm import VLLMRollout, make_tp_group
from grpo_cli.train import engine as eng
from tests.unit.test_rollout_vllm import RecordingLLM, StandInSamplingParams


def main(out: str) -> None:
    d = eng.init_distributed()
    sys.modules["vllm"] = types.SimpleNamespace(SamplingParams=StandInSamplingParams)  # no GPU
    llm = RecordingLLM()
    rollout = VLLMRollout(llm, [2], weights=lambda: iter(()), weights_version=lambda: 0,
                          tp_group=make_tp_group(d.world, d.rank, 2), tp_size=2)
    mine = [[1, 10 + d.rank], [1, 20 + d.rank, 5]]  # rank r's own prompts
    result = rollout.generate(RolloutRequest(mine, n=2, max_new_tokens=4, seed=100 + d.rank))
    json.dump({"submitted": [p["prompt_token_ids"] for p in llm.prompts],
               "seeds": [p.kwargs["seed"] for p in llm.params],
               "kept": [c.prompt_index for c in result.completions],
               "kept_tokens": [c.token_ids[0] for c in result.completions],
               "n_completions": len(result.completions)}, open(f"{out}.{d.rank}.json", "w"))
    dist.barrier()
    dist.destroy_process_group()  # tear the gloo groups down before exit


if __name__ == "__main__":
    main(sys.argv[1])
