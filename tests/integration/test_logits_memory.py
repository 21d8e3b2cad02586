"""The training step's memory at a real vocabulary, where the toy's 261 tokens hide it.

One micro-batch of 16 rows x (48 + 256) tokens through a random-init model of SmolLM2's
shape (49,152-token vocabulary; 2 layers: the LM head's cost does not depend on depth),
forward with entropy and backward, in a process of its own (benchmarks/logits_memory.py):
its peak memory over the start, in units of one fp32 copy of the completion logits
(16 x 257 x 49,152 x 4 B = 771 MiB). Measured: 6.0 copies when the prompt positions went
through the LM head and the fp32 work on the logits kept every intermediate at full size;
3.1 with the head on completion positions and that work in blocks (the logits, their
gradient, the model's own activations and gradients, one block of fp32 work).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_one_micro_batch_costs_about_two_copies_of_its_logits() -> None:
    out = subprocess.run([sys.executable, "benchmarks/logits_memory.py", "--child",
                          "smollm2-135m", "16", "48", "256"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    copies = r["peak_over_start_mib"] / r["fp32_logits_copy_mib"]
    assert copies < 3.6, r
