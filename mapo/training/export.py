"""The trained model as a model config: weights in a local folder, a conf/model-style entry beside it.

``<run>/model/`` holds full weights (a LoRA adapter is merged first), the tokenizer with its chat
template and the base model's generation config (its end-of-turn tokens). ``<run>/conf/model/<name>.yaml``
is a model entry like the ones in conf/model/ (``serve.weights`` = that folder, ``endpoint`` = its
name), so ``python -m serve up --conf-dir <run>/conf/model --model <name>`` serves it and every
role can name it once Hydra sees the file (``hydra.searchpath=[file://<run>/conf]`` + ``model=[...]``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from mapo.core.config import ModelConfig
from mapo.core.store import atomic_write_text

__all__ = ["merge_adapter", "model_entry", "save_dtype_of", "write_model_config"]


def save_dtype_of(setting: str, bf16: bool, fp16: bool) -> str:
    """``auto``: the precision the model was trained in (mixed bf16/fp16 -> that; else float32).

    Saving float32 weights of a float32 run matters: a few small steps change weights by less than
    bfloat16's resolution, so a bf16 copy would serve the base model again.
    """
    if setting != "auto":
        return setting
    return "bfloat16" if bf16 else "float16" if fp16 else "float32"


def merge_adapter(base: str, adapter_dir: Path, out: Path, dtype: str) -> None:
    """Load the base, apply the LoRA adapter, merge it and save full weights to ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def cast_saved(folder: Path, dtype: str) -> None:
    """Rewrite a saved model folder in ``dtype`` (when it was saved in another one)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    model.save_pretrained(folder)


def model_entry(
    name: str, weights: Path, dtype: str, base: ModelConfig | None, *, max_model_len: int | None = None
) -> dict[str, Any]:
    """The conf/model entry of the trained model: the base's client and serving settings, its own
    name, endpoint and weights, and ``--dtype`` so that vLLM serves the precision that was saved."""
    from omegaconf import OmegaConf

    entry: dict[str, Any] = {}
    if base is not None:
        # enum_to_str: StrEnum fields (system_role) as their values, which yaml.safe_dump can write
        entry = OmegaConf.to_container(OmegaConf.structured(base), resolve=True, enum_to_str=True)  # type: ignore[assignment]
        for key in ("base_url", "api_key_env", "price_in_per_mtok", "price_out_per_mtok"):
            entry.pop(key, None)
    serve = dict(entry.get("serve") or {})
    args = [str(a) for a in serve.get("extra_args") or []]
    if "--dtype" in args:  # ours replaces the base's: the folder holds what we saved
        i = args.index("--dtype")
        del args[i : i + 2]
    serve.update(weights=str(weights.resolve()), extra_args=[*args, "--dtype", dtype], data_parallel_replicas=1)
    if "max_model_len" not in serve or max_model_len is not None:
        serve["max_model_len"] = max_model_len or 4096
    entry.update(served_name=name, endpoint=name, serve=serve)
    return entry


def write_model_config(run_dir: Path, name: str, entry: dict[str, Any], comment: str) -> Path:
    """``<run>/conf/model/<name>.yaml`` in conf/model's shape (``# @package models``, one entry)."""
    path = run_dir / "conf" / "model" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({name: entry}, sort_keys=False)
    atomic_write_text(path, f"# @package models\n# {comment}\n{body}")
    return path
