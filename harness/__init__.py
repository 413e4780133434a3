"""speedrun's harness: pinned data, tokenizer, hardware profiles, the training loop, the clock and the record.

Submissions mark their hook implementations with ``harness.hookimpl`` (see ``harness/hookspecs.py``).
"""

import pluggy

hookimpl = pluggy.HookimplMarker("speedrun")

__all__ = ["hookimpl"]
