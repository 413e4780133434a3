"""The 2019 GPT-2 recipe as a speedrun submission (see submission.py).

The hooks are re-exported here so that the package itself can be registered, as the ``speedrun.submissions``
entry point ``gpt2 = "baselines.gpt2"`` in pyproject.toml does.
"""

from baselines.gpt2.submission import build_model, build_optimizer, build_schedule, plan_training, select_dataset

__all__ = ["build_model", "build_optimizer", "build_schedule", "plan_training", "select_dataset"]
