"""Evaluations: CORE (``evals.core``), its bundle (``evals.bundle``) and validation bits per byte (``evals.bpb``).

python -m harness.evaluate RUN_DIR --bundle DIR   # CORE of a run's exported model; see docs/evals.md
"""
