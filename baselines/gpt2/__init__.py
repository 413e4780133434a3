"""The 2019 GPT-2 recipe as a speedrun submission; the hooks are in submission.py.

Importing the package imports ``submission`` too, so that the ``speedrun.submissions`` entry point
``gpt2 = "baselines.gpt2"`` (pyproject.toml) finds ``baselines.gpt2.submission`` as the harness expects.
"""

from baselines.gpt2 import submission

__all__ = ["submission"]
