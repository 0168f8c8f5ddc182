"""Training on mapo's datasets: ``mapo train`` (TRL DPO / KTO, optional LoRA, accelerate-ready).

The training lives in :mod:`mapo.training.train` (the command on the runner: :mod:`mapo.runs.train`);
its config in :mod:`mapo.training.config` (conf/train.yaml + conf/train/{dpo,kto}.yaml). Importing this package loads neither torch nor TRL.
"""

from mapo.training.config import LoraSettings, SplitConfig, TrainRunConfig
from mapo.training.data import held_out, kto_weights, split_by_prompt

__all__ = ["LoraSettings", "SplitConfig", "TrainRunConfig", "held_out", "kto_weights", "split_by_prompt"]
