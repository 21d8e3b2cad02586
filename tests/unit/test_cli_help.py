"""What `--help` tells a newcomer: the keys the README points to, readable usage lines."""

from __future__ import annotations

from typer.testing import CliRunner

from grpo_cli.cli import app


def help_text(*command: str) -> str:
    res = CliRunner().invoke(app, [*command, "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    return res.output


def test_run_help_names_the_most_used_keys() -> None:
    text = help_text("run")
    for key in ("max_len", "data.prompt_template", "algorithm.dynamic_sampling",
                "algorithm.rollout_correction", "trainer.gpus", "resume=<run-id>"):
        assert key in text, key


def test_report_usage_names_its_targets() -> None:
    assert "Usage: grpo report [OPTIONS] {TARGETS}..." in help_text("report")
