"""Every error type the CLI turns into one line, in a leaf module (it imports nothing from
the package), so any module can raise them and ``grpo_cli.cli`` can catch them without
importing torch or the modules that raise them.

Exit codes (see ``cli._guard``): 2 for bad input (:class:`ConfigError` and its subclasses,
:class:`RewardContractError`), 1 for a run that failed (:class:`RunFailure`,
:class:`RewardError`), 143 for :class:`Terminated`.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem: one line naming the key and what is allowed."""


class UnsafeCheckpoint(ConfigError):
    """A checkpoint file holds objects other than tensors and DeepSpeed's plain records
    (bad input: exit 2, one line)."""


class RewardError(RuntimeError):
    """The reward function failed or returned something unusable; names the sample."""


class RewardContractError(RewardError):
    """The reward function ran but broke the contract (a list of one float or dict with
    ``overall`` per input): bad user input, reported like a config error (exit 2)."""


class RunFailure(RuntimeError):
    """A run that started and could not go on; the message says what to change."""


class RolloutOutOfMemory(RunFailure):
    """Sampling ran out of accelerator memory; the message names the settings to lower."""

    @classmethod
    def advise(cls, sequences: int, max_new_tokens: int, n: int,
               micro_batch_size: int) -> RolloutOutOfMemory:
        return cls(
            f"out of memory while sampling {sequences} sequences of up to {max_new_tokens} new "
            f"tokens; lower rollout.micro_batch_size (now {micro_batch_size}), "
            f"data.max_response_length (now {max_new_tokens}) or rollout.n (now {n}), or shard "
            "the model with trainer.zero_stage=3"
        )

    @classmethod
    def advise_vllm(cls, sequences: int, max_new_tokens: int, n: int,
                    gpu_memory_utilization: float | None) -> RolloutOutOfMemory:
        return cls(
            f"out of memory while sampling {sequences} sequences of up to {max_new_tokens} new "
            f"tokens with vLLM; lower data.max_response_length (now {max_new_tokens}) or "
            f"rollout.n (now {n}), change rollout.gpu_memory_utilization (now "
            f"{'null' if gpu_memory_utilization is None else gpu_memory_utilization}: vLLM's "
            "share of the GPU, the rest is training's), or "
            "raise rollout.tensor_parallel_size"
        )


class CheckpointWriteError(RunFailure):
    """A checkpoint could not be written (full disk, quota, file size limit)."""


class TrainingDiverged(RunFailure):
    """More than trainer.max_bad_steps updates had non-finite gradients."""


class Terminated(BaseException):
    """SIGTERM arrived: the run stops like on Ctrl-C and is marked interrupted.

    A BaseException, as KeyboardInterrupt is: a stop, not an error. Code that catches
    Exception must not swallow it; Hydra's launcher does (a job's Exception is its result),
    so a SIGTERMed sweep went on with its next arm."""
