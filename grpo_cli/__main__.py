"""``python -m grpo_cli`` (used by torchrun / the deepspeed launcher)."""

from grpo_cli.cli import main

main()
