"""The nanochat reference recipe as a speedrun baseline: model, optimizer, schedule and depth rules.

Modules: ``depth`` (the depth dial), ``model`` (the GPT), ``optim`` (Muon + AdamW), ``schedule``, ``kernels``
(Triton fused softcap cross-entropy), ``fp8``, ``flops`` (peak FLOPs and MFU), ``submission`` (the hooks),
The hooks live in ``submission.py`` only, so
importing this package (``from baselines.nanochat import depth, model``) registers nothing.
"""
