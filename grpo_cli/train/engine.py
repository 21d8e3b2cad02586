"""DeepSpeed set-up: process group, ZeRO config, policy/reference engines, gathering.

The same code serves one CPU process (gloo), several CPU ranks started by ``torchrun`` or
the ``deepspeed`` launcher, and GPUs (nccl).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from grpo_cli.config.schema import RunConfig
from grpo_cli.launch import free_port


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the launcher's process group, or make a one-rank group for a plain process."""
    cuda = torch.cuda.is_available()
    if not cuda:
        # Say what the run uses, so DeepSpeed does not warn that it found no accelerator
        # (it must be set before DeepSpeed's first import; the ranks inherit it). A user's
        # own DS_ACCELERATOR wins.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if "RANK" not in os.environ:  # not started by a launcher
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        skip_shm_comm_op()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from building its ``deepspeed_shm_comm`` C++ op.

    DeepSpeed's process-group wrapper compiles that op (a shared-memory all-reduce) with the
    host's C++ compiler when it starts, on every CPU run: tens of seconds on a fresh machine
    (once per TORCH_EXTENSIONS_DIR), and a compiler it silently needs. Only DeepSpeed's
    inference all-reduce (AutoTP layers) calls it; a training run's all-reduces, all-gathers
    and reduce-scatters go through gloo, on one rank or many. The wrapper gets the op from
    ``build_shm_op``; None is DeepSpeed's own answer on a host that cannot build it, and
    skips the probe of every op's compatibility (gcc test builds) that comes first."""
    import importlib

    # by name: `import deepspeed.comm.torch as m` binds torch itself (the package attribute)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def ds_config(cfg: RunConfig, world: int) -> dict[str, Any]:
    """DeepSpeed config derived from the run config (batch arithmetic validated already)."""
    t = cfg.trainer
    per_update = t.prompts_per_step // world * cfg.rollout.n // t.updates_per_batch
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": per_update // t.micro_batch_size,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.model.dtype == "bfloat16":
        config["bf16"] = {"enabled": True}
        # Gradients summed over the micro-batches in bf16 lose every addend below 1/256 of
        # the sum (80 micro-batches per update in the math12k recipe): sum them in fp32.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
        if t.zero_stage == 0:  # DeepSpeed keeps an fp32 accumulator from stage 1 on (its
            config["zero_optimization"]["stage"] = 1  # bf16 optimizer); one rank: same memory
    elif cfg.model.dtype == "float16":
        config["fp16"] = {"enabled": True}
    if t.zero_stage == 3:
        config["zero_optimization"].update(stage3_gather_16bit_weights_on_model_save=True)
    return merge_config(config, t.deepspeed)


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mappings key by key (trainer.deepspeed over the
    generated config; validation refused the keys that other settings own)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


class FiniteAdamW(torch.optim.AdamW):
    """AdamW that skips a step whose gradients are not all finite, leaving weights and moments
    untouched, and says so through ``overflow``: the attribute DeepSpeed's engine reads to
    count a skipped step. Used with ZeRO 0, where it is the only guard between a NaN gradient
    and the weights; ZeRO 1-3 optimisers check and skip by themselves."""

    overflow = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.overflow = not all(bool(torch.isfinite(grad).all()) for grad in grads)
        return None if self.overflow else super().step(closure)


def optimizer_step(engine: Any) -> bool:
    """``engine.step()``; True when it ended an accumulation window whose update was skipped
    for non-finite gradients (gradients are averaged over ranks by then: all ranks agree)."""
    boundary = engine.is_gradient_accumulation_boundary()
    skipped_before = engine.skipped_steps
    engine.step()
    return boundary and engine.skipped_steps > skipped_before


def make_policy_engine(model: torch.nn.Module, cfg: RunConfig, config: dict[str, Any]) -> Any:
    import deepspeed

    t = cfg.trainer
    # ZeRO 1-3 wrap only optimisers they know and check gradients themselves.
    adamw = FiniteAdamW if config["zero_optimization"]["stage"] == 0 else torch.optim.AdamW
    optimizer = adamw(
        [p for p in model.parameters() if p.requires_grad],
        lr=t.lr, betas=(t.betas[0], t.betas[1]), eps=t.adam_eps, weight_decay=t.weight_decay,
    )
    scheduler = None
    if t.warmup_steps > 0:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / t.warmup_steps)
        )
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
    return engine


def make_reference_engine(model: torch.nn.Module, config: dict[str, Any]) -> Any:
    """A frozen copy for the KL term; under ZeRO-3 it is sharded like the policy."""
    import deepspeed

    for p in model.parameters():
        p.requires_grad_(False)
    ref_config = {k: v for k, v in config.items() if k not in ("gradient_clipping", "data_types")}
    if config["zero_optimization"]["stage"] != 3:
        ref_config["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=model, config=ref_config)
    engine.eval()
    return engine


@contextlib.contextmanager
def gathered(engine: Any, zero_stage: int) -> Iterator[torch.nn.Module]:
    """The full module for sampling, in eval mode (the KV cache is on; the policy trains in
    train mode). Under ZeRO-3 every shard is gathered once for the duration and DeepSpeed's
    module hooks are taken off, so a forward pass is local.

    With the hooks on, each forward re-gathers (or, while DeepSpeed records its trace, checks
    across ranks) per module: collectives that every rank must make in step. Sampling makes
    one forward per decode step and a rank stops when its own rows end, so ranks would make
    different numbers of them and wait for each other forever. TRL's
    ``unwrap_model_for_generation`` takes the same two steps."""
    module, training = engine.module, engine.module.training
    module.eval()
    try:
        if zero_stage != 3:
            yield module
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())), \
                zero3_hooks_off(engine):
            yield module
    finally:
        module.train(training)


@contextlib.contextmanager
def zero3_hooks_off(engine: Any) -> Iterator[None]:
    """Remove the ZeRO-3 parameter hooks from the engine's module for the duration, then put
    them back as DeepSpeed first registered them (its trace is then recorded anew).

    DeepSpeed's own ``unwrap_model_for_generation`` leaves the root module's start-of-forward
    hook, which still compares traces across ranks while one is being recorded: a collective
    per forward. It goes too."""
    offload = getattr(engine.optimizer, "parameter_offload", None)
    if offload is None:  # no parameter partitioning (ZeRO 0-2)
        yield
        return
    root = offload.module
    start_of_forward = root._forward_pre_hooks[offload.fwd_pre_hook.id]
    offload._remove_module_hooks()  # sub-module hooks and the start-of-forward hook
    offload.forward_hooks, offload.backward_hooks = [], []
    try:
        yield
    finally:
        offload.fwd_pre_hook = root.register_forward_pre_hook(start_of_forward)
        offload._register_deepspeed_module(root)


def reset_peak_memory(d: Dist) -> None:
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)


def peak_memory(d: Dist) -> dict[str, float]:
    """``perf/gpu_peak_gib``: the most GPU memory torch held at once on any rank since the
    step began (its probe, sampling and update; vLLM's own pool is not torch's). A collective
    on every rank; nothing on the CPU."""
    if d.device.type != "cuda":
        return {}
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(d.device)), device=d.device)
    if d.world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {"perf/gpu_peak_gib": float(peak) / 2**30}


def finish_distributed(d: Dist) -> None:
    """End a multi-rank run together: each rank waits until rank 0 has closed the run store,
    then the process group is taken down before the interpreter exits.

    Without it the first rank to finish exits while rank 0 still writes, and the process
    group's threads are torn down by static destructors at exit: now and then (about 1 run
    in 6 on 2 CPU ranks) that aborts the rank ("terminate called without an active
    exception") and torchrun then stops rank 0 mid-write, failing a finished run. One rank
    keeps its group: in-process runs (sweep arms, tests) reuse it."""
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def sharded_tensors(module: torch.nn.Module) -> int:
    """Parameters ZeRO-3 holds as shards. Those under ``stage3_param_persistence_threshold``
    elements (1e5 by default) stay whole on every rank and never need gathering."""
    return sum(1 for p in module.parameters() if not getattr(p, "ds_persist", True))


def all_gather_objects(obj: Any, world: int) -> list[Any]:
    """Gather a picklable object from every rank (metrics need the whole global batch)."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
