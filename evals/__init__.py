"""Evaluations: CORE (``evals.core``), its bundle (``evals.bundle``) and validation bits per byte (``evals.bpb``).

python -m evals.core --checkpoint PATH     # CORE of a saved checkpoint; see docs/evals.md
"""
