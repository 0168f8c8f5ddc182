"""Training on mapo's datasets: ``mapo train`` (TRL DPO / KTO, optional LoRA, accelerate-ready).

The training lives in :mod:`mapo.training.train` (the command on the runner: :mod:`mapo.runs.train`);
its config in :mod:`mapo.training.config` (conf/train.yaml + conf/train/{dpo,kto}.yaml). Importing this package loads neither torch nor TRL.
"""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.training.config": ("LoraSettings", "SplitConfig", "TrainRunConfig"),
    "mapo.training.data": ("held_out", "kto_weights", "split_by_prompt"),
    "mapo.training.train": ("Training",),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
