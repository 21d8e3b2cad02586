"""Peak host memory of one training micro-step at real vocabulary sizes.

The LM head's output is [rows, positions, vocabulary]: 32 rows x 300 positions x 49,152
(SmolLM2) is 1.9 GB in fp32, and Qwen's 151,936-token vocabulary triples it. Every fp32
copy of it (log-softmax, entropy, their gradients) costs that again; the toy's 261-token
vocabulary hides all of it. Each configuration runs in its own process: a random-init
model from a real config (2 layers: the head's cost does not depend on depth), one
micro-batch through the training code's own ``forward_logprobs`` with entropy, and the
backward pass; peak RSS (ru_maxrss) minus the RSS before the forward pass.

    .venv/bin/python benchmarks/logits_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (name, vocabulary, hidden, heads, kv heads, intermediate) of the real configs
SHAPES = {
    "smollm2-135m": (49152, 576, 9, 3, 1536),
    "qwen2.5-0.5b": (151936, 896, 14, 2, 4864),
}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(shape: str, rows: int, prompt: int, completion: int,
          device: str = "cpu") -> dict[str, float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from grpo_cli.rollout.base import Completion
    from grpo_cli.train.batch import forward_logprobs, make_batch

    vocab, hidden, heads, kv, inter = SHAPES[shape]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, num_hidden_layers=2,
                         tie_word_embeddings=True, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).train().to(device)
    comps = [Completion(0, i, torch.randint(0, vocab, (completion,)).tolist(),
                        [0.0] * completion, "length") for i in range(rows)]
    batch = make_batch([list(range(prompt))] * rows, comps, torch.ones(rows), 0,
                       False).to(torch.device(device))
    if device == "cuda":  # the allocator's own count: exact, and what fits on the GPU
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_mib()
    logp, entropy = forward_logprobs(model, batch, 1.0, with_entropy=True)
    logp.sum().backward()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    logits_mib = rows * (completion + 1) * vocab * 4 / 2**20  # one fp32 copy, completion only
    return {"peak_over_start_mib": peak - before, "fp32_logits_copy_mib": logits_mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, metavar=("SHAPE", "ROWS", "PROMPT", "COMPLETION"))
    ap.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (peak allocated)")
    args = ap.parse_args()
    if args.child:
        shape, rows, prompt, completion = args.child
        print(json.dumps(child(shape, int(rows), int(prompt), int(completion), args.device)))
        return
    cases = [("smollm2-135m", 32, 48, 256), ("smollm2-135m", 8, 48, 256),
             ("qwen2.5-0.5b", 8, 48, 256)]
    where = "GPU, torch.cuda.max_memory_allocated" if args.device == "cuda" else "host, RSS"
    print(f"\n### Peak memory of one training micro-step ({where}, fp32)\n")
    print("| model shape | rows x (prompt + completion) | one fp32 logits copy | peak over start |"
          " copies |")
    print("| --- | --- | --- | --- | --- |")
    for shape, rows, prompt, completion in cases:
        out = subprocess.run([sys.executable, __file__, "--child", shape, str(rows), str(prompt),
                              str(completion), "--device", args.device],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        copies = r["peak_over_start_mib"] / r["fp32_logits_copy_mib"]
        print(f"| {shape} | {rows} x ({prompt} + {completion}) | "
              f"{r['fp32_logits_copy_mib']:,.0f} MiB | {r['peak_over_start_mib']:,.0f} MiB | "
              f"{copies:.1f} |")


if __name__ == "__main__":
    main()
