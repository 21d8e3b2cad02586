"""`grpo run trainer.gpus=N`: the launcher command lines, read back by the launchers' own
argument parsers (torchrun's and DeepSpeed's), and the settings refused before launching."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepspeed.launcher import runner as ds_runner
from torch.distributed import run as torchrun

from grpo_cli.config.schema import RunConfig, TrainerConfig
from grpo_cli.config.validate import validate
from grpo_cli.errors import ConfigError
from grpo_cli.launch import launch_command, needs_launch

ARGS = ["config=conf/experiment/geo3k_qwen2_5_vl_7b.yaml", "max_len=1024"]


def torchrun_args(cmd: list[str]):  # noqa: ANN201 - argparse.Namespace
    """What elastic.main hands the installed torchrun (its options only)."""
    from grpo_cli.elastic import known_options

    assert cmd[1:3] == ["-m", "grpo_cli.elastic"]  # torchrun's agent, through elastic.main
    return torchrun.get_args_parser().parse_args(known_options(cmd[3:]))


def test_eight_gpus_on_one_node_with_torchrun() -> None:
    cmd = launch_command(TrainerConfig(gpus=8), ARGS, "r1")
    ns = torchrun_args(cmd)
    assert ns.nproc_per_node == "8" and ns.standalone and ns.module
    assert ns.training_script == "grpo_cli"
    assert ns.training_script_args == ["run", *ARGS, "run_id=r1"]


def test_two_nodes_with_torchrun_meet_at_a_c10d_rendezvous() -> None:
    t = TrainerConfig(gpus=8, nodes=2, master_addr="node01", master_port=29600,
                      rdzv_timeout=45)
    ns = torchrun_args(launch_command(t, [*ARGS, "run_id=r2"], "unused", env={}))
    assert (ns.nnodes, ns.nproc_per_node) == ("2", "8")
    assert (ns.rdzv_backend, ns.rdzv_endpoint, ns.rdzv_id) == ("c10d", "node01:29600", "r2")
    assert ns.rdzv_conf == "join_timeout=45,read_timeout=45"
    assert not ns.standalone


@pytest.mark.parametrize(("args", "env", "rdzv_id"), [
    ([], {"SLURM_JOB_ID": "4242"}, "job-4242"),  # the scheduler's id, equal on every node
    (["run_id=a", "resume=b"], {"SLURM_JOB_ID": "4242"}, "b"),  # the user's id wins
    ([], {}, "grpo"),  # nothing shared but the endpoint
])
def test_every_node_derives_the_same_rendezvous_id(args: list[str], env: dict[str, str],
                                                   rdzv_id: str) -> None:
    """Each node mints its own candidate run id; the rendezvous id must not depend on it."""
    t = TrainerConfig(nodes=2, master_addr="node01")
    ids = {torchrun_args(launch_command(t, args, candidate, env=env)).rdzv_id
           for candidate in ("node0-candidate", "node1-candidate")}
    assert ids == {rdzv_id}


def test_two_nodes_from_a_hostfile_with_the_deepspeed_launcher(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node01 slots=8\nnode02 slots=8\n")
    t = TrainerConfig(gpus=8, nodes=2, launcher="deepspeed", hostfile=str(hostfile))
    cmd = launch_command(t, ARGS, "r3")
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    ns = ds_runner.parse_args(cmd[3:])
    assert (ns.num_gpus, ns.num_nodes, ns.hostfile) == (8, 2, str(hostfile))
    assert ns.module and ns.user_script == "grpo_cli" and ns.no_local_rank
    assert ns.user_args == ["run", *ARGS, "run_id=r3"]
    assert ds_runner.fetch_hostfile(str(hostfile)) == {"node01": 8, "node02": 8}


def test_a_given_run_or_resume_id_is_kept() -> None:
    for pinned in ("run_id=mine", "resume=mine"):
        ns = torchrun_args(launch_command(TrainerConfig(gpus=2), [pinned], "other"))
        assert ns.training_script_args == ["run", pinned]


def test_only_the_first_process_launches() -> None:
    t = TrainerConfig(gpus=2)
    assert needs_launch(t, {})
    assert not needs_launch(t, {"RANK": "0", "WORLD_SIZE": "2"})  # a rank trains
    assert not needs_launch(TrainerConfig(), {})  # one rank: no launcher in between


@pytest.mark.parametrize(("trainer", "message"), [
    (dict(nodes=2), "trainer.nodes=2 with torchrun needs trainer.master_addr"),
    (dict(nodes=2, launcher="deepspeed"), "needs trainer.hostfile"),
    (dict(hostfile="hosts"), "set trainer.launcher=deepspeed"),
    (dict(launcher="deepspeed", hostfile="/no/such/hostfile"), "no such file"),
    (dict(launcher="mpirun"), "trainer.launcher=mpirun: allowed values are torchrun, deepspeed"),
    (dict(gpus=0), "must be >= 1"),
    (dict(master_port=70000), "trainer.master_port=70000"),
    (dict(nodes=2, master_addr="n1", rdzv_timeout=0), "trainer.rdzv_timeout=0"),
])
def test_launch_settings_are_checked_before_anything_starts(
        trainer: dict, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)  # the launching process, not a rank
    with pytest.raises(ConfigError, match=message):
        launch_command(TrainerConfig(**trainer), [], "r")


def test_batch_split_is_validated_for_the_ranks_about_to_start(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = RunConfig()
    cfg.trainer.gpus = 3  # 16 prompts per step cannot split over 3 ranks
    with pytest.raises(ConfigError, match="not divisible by the 3 ranks"):
        validate(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a launched rank the launcher's count holds
    validate(cfg)
