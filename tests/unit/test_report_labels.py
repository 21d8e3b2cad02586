"""Run labels come from the config keys that set runs apart, and seeds group."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from grpo_cli.config.schema import RunConfig
from grpo_cli.report.load import RunData, assign_labels


def _run(run_id: str, max_len: int, seed: int, drop: str | None = None,
         **trainer: object) -> RunData:
    config = asdict(RunConfig())
    config["data"]["max_response_length"], config["seed"] = max_len, seed
    config["trainer"].update(trainer)
    if drop:  # a key an older grpo-cli did not write
        del config["trainer"][drop]
    return RunData(run_id, "store", None, config, {}, pd.DataFrame())


def test_seeds_group_and_a_key_an_older_version_lacked_is_no_difference() -> None:
    runs = [_run("a", 32, 0, drop="adam_eps"), _run("b", 32, 1, drop="adam_eps"),
            _run("c", 256, 0, drop="adam_eps"), _run("d", 256, 1)]
    assign_labels(runs)
    assert [r.label for r in runs] == ["max_len=32 seed=0", "max_len=32 seed=1",
                                       "max_len=256 seed=0", "max_len=256 seed=1"]
    assert runs[2].group == runs[3].group == "max_len=256"


def test_a_key_set_apart_from_its_default_still_labels() -> None:
    runs = [_run("a", 32, 0, drop="adam_eps"), _run("b", 32, 0, adam_eps=1.0)]
    assign_labels(runs)
    assert [r.label for r in runs] == ["trainer.adam_eps=1e-08", "trainer.adam_eps=1.0"]
