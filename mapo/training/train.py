"""``mapo train``: DPO or KTO (TRL) on a dataset built by ``mapo build``, then the trained model
as a model config that ``python -m serve`` and every role can use.

Runs as one process or under ``accelerate launch`` (one process per GPU; ``slurm/train.sbatch``):
every process composes the same config and computes the same split; process 0 holds the run
lock and writes the run folder.

Files in ``output_dir``:

* ``config.yaml``: the config of the latest start; a resume that changes what is trained (base
  model, dataset, method, split, LoRA) is refused, other changes (e.g. a larger ``max_steps``) are
  logged and applied;
* ``split.json`` and ``eval_prompts.jsonl``: the prompts of each side (the held-out ones are the
  prompts file of a `mapo winrate` on them);
* ``checkpoints/checkpoint-<step>/``: TRL checkpoints; a rerun of the same command resumes from the last;
* ``metrics.jsonl`` (one record per log event: train, eval, summary) and ``metrics.png``;
* ``model/``: the trained model (LoRA merged), ``conf/model/<name>.yaml``: its model entry;
* ``manifest.json``: status (``running`` while it trains, then how it ended, as for every command:
  complete | stopped | interrupted | failed; Ctrl-C and SLURM's scancel are ``interrupted``, exit 130,
  and a rerun resumes from the last checkpoint), counts, timings, steps/s, eval metrics before and
  after training, the model entry's path.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mapo.core.config import ConfigError
from mapo.core.store import atomic_write_text
from mapo.core.types import RUNNING
from mapo.training import data, export, metrics
from mapo.training.config import TrainRunConfig, check, register_schema, trl_config_class

__all__ = ["IDENTITY_KEYS", "Training", "last_checkpoint"]

log = logging.getLogger(__name__)

register_schema()  # conf/train.yaml extends train_schema; the command (mapo.runs.train) imports this module

IDENTITY_KEYS = ("base_model", "dataset", "method", "split", "lora")
"""What a resumed run may not change: the checkpoint was trained on exactly these."""

_EVAL_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _base(cfg: TrainRunConfig) -> tuple[str, Any, str | None]:
    """(what from_pretrained gets, the base ModelConfig or None, a chat template file or None)."""
    if cfg.base_model in cfg.models:
        m = cfg.models[cfg.base_model]
        if m.serve is None or not m.serve.weights:
            raise ConfigError(
                f"base_model={cfg.base_model!r}: models.{cfg.base_model} has no serve.weights "
                "(an API model cannot be trained; name a served model or a local folder)"
            )
        from mapo.serving import weights

        path = weights.prepare(cfg.base_model, m.serve.weights)  # embedded GGUF -> converted folder, cached
        template = None
        if m.serve.chat_template:
            t = Path(m.serve.chat_template)
            template = str(t if t.is_absolute() else Path(weights.__file__).parent / t)
        return path, m, template
    if Path(cfg.base_model).expanduser().is_dir():
        return str(Path(cfg.base_model).expanduser().resolve()), None, None
    raise ConfigError(
        f"base_model={cfg.base_model!r} is neither a known model ({', '.join(sorted(cfg.models))}) nor a local folder"
    )


def last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* ``checkpoint-<step>``: the trainer writes ``trainer_state.json`` last, so a
    job killed while saving leaves a folder without it (or with a torn one), which is skipped."""
    found = []
    for d in folder.glob("checkpoint-*"):
        step = d.name.removeprefix("checkpoint-")
        if not step.isdigit():
            continue
        try:
            json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s is incomplete (killed while saving?): skipped", d)
            continue
        found.append((int(step), d))
    return str(max(found)[1]) if found else None


def _config_yaml(cfg: TrainRunConfig) -> str:
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    container.pop("models", None)  # conf/model as a whole is not what was trained
    return OmegaConf.to_yaml(container)


def _flatten(d: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume(run_dir: Path, cfg: TrainRunConfig) -> list[str]:
    """Compare with the config of the previous start; returns the changed keys allowed to change."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return []
    before = OmegaConf.to_container(OmegaConf.load(path))
    now = OmegaConf.to_container(OmegaConf.create(_config_yaml(cfg)))
    assert isinstance(before, dict) and isinstance(now, dict)
    flat_before, flat_now = _flatten(before), _flatten(now)
    changed = sorted(k for k in set(flat_before) | set(flat_now) if flat_before.get(k) != flat_now.get(k))
    bad = [k for k in changed if k.split(".")[0] in IDENTITY_KEYS]
    if bad and any((run_dir / "checkpoints").glob("checkpoint-*")):
        diffs = "; ".join(f"{k}: {flat_before.get(k)!r} -> {flat_now.get(k)!r}" for k in bad)
        raise ConfigError(
            f"{run_dir} holds checkpoints of another training ({diffs}); "
            "use another run_name (or output_dir) for a new training"
        )
    return changed


def _trl_args(cfg: TrainRunConfig, run_dir: Path, n_eval: int, weights: tuple[float, float] | None) -> Any:
    import torch

    kwargs: dict[str, Any] = dict(cfg.trl)
    if "bf16" not in kwargs and "fp16" not in kwargs:
        # TRL turns bf16 on by default; on a CPU that is slow autocast, so only where a GPU supports it
        kwargs["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if "disable_tqdm" not in kwargs:
        kwargs["disable_tqdm"] = _progress(cfg) != "bar"
    kwargs.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # pinning is for copies to a GPU
    kwargs.setdefault("use_cpu", not torch.cuda.is_available())  # as the PartialState made in _train
    if n_eval:
        kwargs.setdefault("eval_strategy", "steps")
        if kwargs["eval_strategy"] == "steps":
            kwargs.setdefault("eval_steps", kwargs.get("save_steps", 500))
    if weights is not None:
        kwargs.setdefault("desirable_weight", weights[0])
        kwargs.setdefault("undesirable_weight", weights[1])
    cls = trl_config_class(cfg.method)
    try:
        return cls(output_dir=str(run_dir / "checkpoints"), **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trl: {cls.__name__} refused the settings: {e}") from None


def _progress(cfg: TrainRunConfig) -> str:
    if cfg.progress == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return cfg.progress


def _tokenizer(path: str, template: str | None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if template and not tok.chat_template:  # e.g. Gemma-3 base: the serving template is the training one
        tok.chat_template = Path(template).read_text(encoding="utf-8")
    if not tok.chat_template:
        raise ConfigError(
            f"base_model: the tokenizer in {path} has no chat template, and mapo's datasets are conversational "
            "(set serve.chat_template in the model config)"
        )
    return tok


def _peft_config(cfg: TrainRunConfig) -> Any:
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
        **dict(cfg.lora.options),
    )


def _eval_summary(records: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    evals = [r for r in records if r["split"] == "eval" and r["step"] == step]
    if not evals:
        return None
    return {"step": step, **{k: evals[-1][k] for k in _EVAL_KEYS if k in evals[-1]}}


class Training:
    """One ``mapo train`` in this process: what the command (:class:`mapo.runs.train.Train`, on the run
    skeleton: lock, manifest endings, signals) runs. ``write`` adds fields to the manifest;
    ``interrupted`` raises a signal already received (called at each step)."""

    def __init__(self, cfg: TrainRunConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.writer = _rank() == 0
        """Process 0 holds the lock and writes the folder."""
        self.state: Any = None

    def check(self) -> None:
        check(self.cfg)

    def run(self, write: Callable[..., None], interrupted: Callable[[], None]) -> dict[str, Any]:
        import torch
        from accelerate import PartialState

        cfg, run_dir, main = self.cfg, self.run_dir, self.writer
        changed = _check_resume(run_dir, cfg)
        # joins the process group under accelerate launch (a no-op alone); without a GPU the processes
        # are CPU workers (gloo), which accelerate only assumes when told cpu=True
        cpu = bool(cfg.trl.get("use_cpu")) or not torch.cuda.is_available()
        state = self.state = PartialState(cpu=cpu)
        if main:
            atomic_write_text(run_dir / "config.yaml", _config_yaml(cfg))
        with state.main_process_first():  # process 0 converts the embedded weights, the others reuse them
            base_path, base_cfg, template = _base(cfg)
        name = cfg.name or f"{cfg.base_model if base_cfg is not None else Path(base_path).name}-{cfg.method}"
        name = name.replace(".", "-").replace("/", "-")

        last = last_checkpoint(run_dir / "checkpoints")
        if last and changed:
            log.warning("resuming %s with changed settings: %s", last, ", ".join(changed))
        write(
            command="train",
            status=RUNNING,
            output_dir=str(run_dir),
            method=cfg.method,
            base_model=cfg.base_model,
            base_weights=base_path,
            dataset=cfg.dataset,
            name=name,
            resumed_from=last,
            world_size=state.num_processes,
            device=str(state.device),
            host=platform.node(),
            versions=_versions(),
        )
        return _fit(cfg, run_dir, main, state, write, interrupted, base_path, base_cfg, template, name, last)

    def finish(self) -> None:
        import torch

        if self.state is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.state.wait_for_everyone()


def _versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers
    import trl

    return {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
    }


def _fit(
    cfg: TrainRunConfig,
    run_dir: Path,
    main: bool,
    state: Any,
    write: Callable[..., None],
    interrupted: Callable[[], None],
    base_path: str,
    base_cfg: Any,
    template: str | None,
    name: str,
    last: str | None,
) -> dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()
    rows = data.load_rows(cfg.dataset, cfg.method)
    split = data.split_by_prompt(rows["prompt_id"], cfg.split.eval_fraction, cfg.split.seed)
    evals = set(split.eval)
    is_eval = [str(p) in evals for p in rows["prompt_id"]]
    train_rows = rows.select([i for i, e in enumerate(is_eval) if not e])
    eval_rows = rows.select([i for i, e in enumerate(is_eval) if e]) if evals else None
    if main:
        data.write_split(
            run_dir,
            split,
            rows,
            {
                "eval_fraction": cfg.split.eval_fraction,
                "seed": cfg.split.seed,
                "method": cfg.method,
                "dataset": cfg.dataset,
            },
        )
    weights = None
    if cfg.method == "kto" and not {"desirable_weight", "undesirable_weight"} & set(cfg.trl):
        weights = data.kto_weights(train_rows["label"])
    n_eval = len(eval_rows) if eval_rows is not None else 0
    args = _trl_args(cfg, run_dir, n_eval, weights)
    counts = {
        "rows": len(rows),
        "train_rows": len(train_rows),
        "eval_rows": n_eval,
        "train_prompts": len(split.train),
        "eval_prompts": len(split.eval),
    }
    if cfg.method == "kto":
        labels = train_rows["label"]
        counts.update(train_desirable=sum(labels), train_undesirable=len(labels) - sum(labels))
    write(
        data=counts,
        kto_weights={
            "desirable": args.desirable_weight,
            "undesirable": args.undesirable_weight,
            "auto": weights is not None,
        }
        if cfg.method == "kto"
        else None,
        trl_args={k: getattr(args, k) for k in sorted(cfg.trl)},
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
    )
    log.info("train: %s", counts)

    from transformers import PrinterCallback, TrainerCallback

    class _Interrupted(TrainerCallback):
        """A signal the trainer's code swallowed still ends the run at the next step (runner's rule)."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            interrupted()

    from trl import DPOTrainer, KTOTrainer

    metrics_path = run_dir / "metrics.jsonl"
    if last:
        step = int(Path(last).name.split("-")[-1])
        if main and (dropped := metrics.truncate_after(metrics_path, step)):
            log.info("dropped %d metric records logged after checkpoint %s", dropped, Path(last).name)
    elif main and metrics_path.exists():
        metrics_path.unlink()  # a fresh start (no checkpoint): records of an earlier attempt are stale
    trainer_cls = DPOTrainer if cfg.method == "dpo" else KTOTrainer
    trainer = trainer_cls(
        model=base_path,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=_tokenizer(base_path, template),
        peft_config=_peft_config(cfg),
        callbacks=[metrics.MetricsLog(metrics_path, echo=_progress(cfg) == "log"), _Interrupted()],
    )
    if args.disable_tqdm:  # our MetricsLog prints one line per log event; the raw dicts would double it
        trainer.remove_callback(PrinterCallback)
    if eval_rows is not None and not last:
        trainer.evaluate()  # step 0: the eval metrics before any training
    t0 = time.time()
    step0 = trainer.state.global_step
    trainer.train(resume_from_checkpoint=last)
    train_s = time.time() - t0
    steps = trainer.state.global_step - (int(Path(last).name.split("-")[-1]) if last else step0)
    # every process decides alike (evaluate is collective): from the trainer state, not from our file
    done = trainer.state.global_step
    if eval_rows is not None and not any("eval_loss" in h and h.get("step") == done for h in trainer.state.log_history):
        trainer.evaluate()
    records = metrics.read_metrics(metrics_path) if main else []

    dtype = export.save_dtype_of(cfg.save_dtype, bool(args.bf16), bool(args.fp16))
    model_dir = run_dir / "model"
    if cfg.lora.enabled:
        trainer.save_model(str(run_dir / "adapter"))
        if main:
            export.merge_adapter(base_path, run_dir / "adapter", model_dir, dtype)
    else:
        trainer.save_model(str(model_dir))
        if main and dtype != "float32":
            export.cast_saved(model_dir, dtype)
    state.wait_for_everyone()
    out: dict[str, Any] = {}
    if main:
        gen_cfg = Path(base_path) / "generation_config.json"
        if gen_cfg.exists():  # the base's end-of-turn tokens, which vLLM stops on
            atomic_write_text(model_dir / "generation_config.json", gen_cfg.read_text(encoding="utf-8"))
        max_len = None if base_cfg is not None else getattr(trainer.model.config, "max_position_embeddings", None)  # type: ignore[union-attr]
        entry = export.model_entry(name, model_dir, dtype, base_cfg, max_model_len=max_len)
        conf = export.write_model_config(
            run_dir, name, entry, f"written by `mapo train` ({cfg.method} of {cfg.base_model} on {cfg.dataset})"
        )
        plotted = metrics.plot_metrics(records, run_dir / "metrics.png", f"{cfg.method.upper()} of {cfg.base_model}")
        out = {
            "global_step": trainer.state.global_step,
            "steps_this_run": steps,
            "steps_per_s": round(steps / train_s, 4) if train_s > 0 and steps else None,
            "eval_before": _eval_summary(records, 0),
            "eval_after": _eval_summary(records, trainer.state.global_step),
            "final_train_loss": next(
                (r["loss"] for r in reversed(records) if r["split"] == "train" and "loss" in r), None
            ),
            "model_dir": str(model_dir),
            "model_config": str(conf),
            "save_dtype": dtype,
            "plot": str(run_dir / "metrics.png") if plotted else None,
            "split": {
                "train_prompts": len(split.train),
                "eval_prompts": len(split.eval),
                "file": str(run_dir / "split.json"),
            },
            "timings_s": {"train": round(train_s, 2)},
        }
        log.info(
            "trained %s: %d steps (%s steps/s); model config %s; serve it with: "
            "python -m serve up --conf-dir %s --model %s",
            name,
            steps,
            out["steps_per_s"],
            conf,
            conf.parent,
            name,
        )
    return out
