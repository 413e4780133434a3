"""Optional Weights & Biases logging (``--wandb PROJECT``), by the referee: each step's metrics as the worker
reports them, and the written record's outcome as the run's summary.

Offline by default (``WANDB_MODE=offline`` unless the environment says otherwise; ``disabled`` turns it
off). It never blocks or fails a run: a wandb error becomes one warning and logging stops.
"""

from __future__ import annotations

import os
import sys
import warnings

from harness.record import Record

INIT_TIMEOUT_S = 30


class WandbObserver:
    def __init__(self, project: str, name: str, config: dict):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = None
        try:
            import wandb

            self.run = wandb.init(
                project=project, name=name, config=config, settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S)
            )
        except Exception as exc:  # noqa: BLE001 - logging must never stop a run
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        warnings.warn(f"wandb disabled for this run: {type(exc).__name__}: {exc}", stacklevel=2)
        print(f"warning: wandb disabled for this run ({exc})", file=sys.stderr)
        self.run = None

    def log_metrics(self, step: int, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)

    def run_finished(self, record: Record) -> None:
        """The record as written: its status, training time and every numeric metric."""
        if self.run is None:
            return
        try:
            metrics = record.metrics.to_json()
            self.run.summary.update(
                {
                    "status": record.status,
                    "training_time_s": record.training_time_s,
                    **{k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
                }
            )
            self.run.finish()
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)
