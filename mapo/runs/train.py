"""``mapo train`` on the run skeleton: the command's glue to :func:`mapo.runs.runner.execute_local`.

The training itself (TRL DPO/KTO, checkpoints, the trained model's config) is
:class:`mapo.training.train.Training`; this module gives it the runner's lock, manifest, endings
(:class:`~mapo.core.types.RunStatus`) and signals, so ``mapo.training`` imports no ``mapo.runs``.
"""

from __future__ import annotations

from typing import Any

from mapo.runs.runner import LocalCommand, Manifest, execute_local, raise_if_interrupted
from mapo.training.config import TrainRunConfig
from mapo.training.train import Training  # registers train_schema, which conf/train.yaml extends

__all__ = ["Train", "train"]


class Train(LocalCommand):
    """``mapo train``: one :class:`~mapo.training.train.Training` under :func:`execute_local`."""

    name = "train"

    def __init__(self, cfg: TrainRunConfig) -> None:
        self.training = Training(cfg)
        super().__init__(self.training.run_dir, writer=self.training.writer)

    def check(self) -> None:
        self.training.check()

    def saved(self) -> str:
        return "the checkpoints so far"

    def work(self, manifest: Manifest) -> dict[str, Any]:
        return self.training.run(manifest.write, raise_if_interrupted)

    def finish(self) -> None:
        self.training.finish()


async def train(cfg: TrainRunConfig) -> dict[str, Any] | None:
    """Run the training (async only to fit the CLI's command shape; it blocks). Returns the manifest
    in process 0 (one "done" line per run), None in the other processes of an ``accelerate launch``."""
    return execute_local(Train(cfg))
