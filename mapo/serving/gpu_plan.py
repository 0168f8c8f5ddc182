"""A GPU serving plan, checked before any GPU is touched: dtype and memory, with the numbers.

Pure functions over a model's ``config.json`` values and the GPUs' memory and compute capability:

* :func:`choose_dtype`: bfloat16 on compute capability >= 8.0; below that float16, except for the
  model types vLLM 0.32 refuses in float16 (Gemma-2/3, GLM-4: activations overflow), which get
  float32. ``serve.dtype`` forces a dtype; one that vLLM would refuse on this GPU is refused here.
* :func:`plan_memory`: per GPU, weights + runtime reserve + KV cache for ``full_sequences``
  sequences of ``max_model_len`` tokens must fit in ``gpu_mem x gpu_memory_utilization``. It checks
  a given tensor-parallel size or chooses the smallest that fits, and names the largest
  ``max_model_len`` that would fit when the asked one does not.

The shapes come from the model's own ``config.json`` when it is on this machine (a local weights
folder or the Hugging Face cache), else from the published values shipped in ``model_configs/``.
``python -m serve plan`` prints a plan before ``sbatch``; ``serve up`` checks one on a GPU node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "FLOAT16_UNSAFE",
    "DtypeChoice",
    "GpuInfo",
    "MemoryPlan",
    "ModelShape",
    "PlanError",
    "choose_dtype",
    "detect_gpu_info",
    "load_model_config",
    "plan_memory",
]

GIB = 1024**3
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"

DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
"""vLLM 0.32's default ``--gpu-memory-utilization`` (vllm/config/cache.py)."""

BASE_RESERVE_GIB = 1.0
"""Per GPU, outside weights and KV cache: CUDA context, cuBLAS workspaces, NCCL buffers, CUDA graphs.
An estimate (not measured here: no GPU); the activation and sampler peaks are added per model."""

FULL_SEQUENCES = 4
"""Default number of ``max_model_len`` sequences the KV cache must hold at once. vLLM itself starts with
room for one; feedback conversations and debate histories grow towards max_model_len, and a server
that holds one or two of them at once serialises a client that keeps dozens of requests in flight."""

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

FLOAT16_UNSAFE = {
    "gemma2": "Gemma-2's activations overflow float16 (vLLM 0.32 refuses it: numerical instability)",
    "gemma3": "Gemma-3's activations overflow float16 (vLLM 0.32 refuses it: numerical instability)",
    "gemma3_text": "Gemma-3's activations overflow float16 (vLLM 0.32 refuses it: numerical instability)",
    "glm4": "GLM-4 is numerically unstable in float16 (vLLM 0.32 refuses it)",
}
"""Model types that must not run in float16: vLLM 0.32's ``_FLOAT16_NOT_SUPPORTED_MODELS``."""


class PlanError(ValueError):
    """The plan cannot work (or the model's shape is unknown); the message has the numbers."""


# ---------------------------------------------------------------------------------------------
# dtype


@dataclass(frozen=True)
class DtypeChoice:
    """The ``--dtype`` for a GPU server, why, and a warning a user should see (or None)."""

    dtype: str
    why: str
    warning: str | None = None

    @property
    def bytes(self) -> int:
        """Bytes per weight / KV element."""
        return DTYPE_BYTES[self.dtype]


def choose_dtype(capability: float, model_type: str, forced: str | None = None) -> DtypeChoice:
    """The dtype for a model of ``model_type`` on GPUs of compute ``capability`` (e.g. 7.0 for V100).

    bfloat16 needs compute capability >= 8.0 (Ampere); below it float16, or float32 for the model
    types of :data:`FLOAT16_UNSAFE` (twice the memory; :func:`plan_memory` says whether it fits).
    ``forced`` (``serve.dtype``) wins, unless vLLM would refuse it on this GPU or for this model.
    """
    unsafe = FLOAT16_UNSAFE.get(model_type)
    if forced:
        dtype = {"half": "float16", "float": "float32"}.get(forced, forced)
        if dtype not in DTYPE_BYTES:
            raise PlanError(f"serve.dtype {forced!r} is not one of {sorted(DTYPE_BYTES)}")
        if dtype == "bfloat16" and capability < 8.0:
            raise PlanError(
                f"serve.dtype bfloat16 needs compute capability >= 8.0, these GPUs have {capability:.1f} "
                "(vLLM refuses it); use float16, or float32 for Gemma-2"
            )
        if dtype == "float16" and unsafe:
            raise PlanError(f"serve.dtype float16 for a {model_type} model: {unsafe}; use bfloat16 or float32")
        return DtypeChoice(dtype, f"serve.dtype forces {dtype}")
    if capability >= 8.0:
        return DtypeChoice("bfloat16", f"compute capability {capability:.1f} >= 8.0 has bfloat16")
    if unsafe:
        return DtypeChoice(
            "float32",
            f"compute capability {capability:.1f} < 8.0 has no bfloat16, and {unsafe}",
            warning=f"{model_type} in float32 on compute capability {capability:.1f}: twice the weights memory "
            "of bfloat16, and slower; a GPU with compute capability >= 8.0 (A100, L40S, H100) runs it in bfloat16",
        )
    return DtypeChoice(
        "float16",
        f"compute capability {capability:.1f} < 8.0 has no bfloat16",
        warning=f"float16 instead of bfloat16 (compute capability {capability:.1f}): a model trained in "
        "bfloat16 may overflow in float16 (inf/NaN logits show as empty or garbled answers)",
    )


# ---------------------------------------------------------------------------------------------
# model shape


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs from a decoder-only model's ``config.json``."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None
    sliding_window: int | None
    sliding_layers: int
    """Layers whose attention sees only the last ``sliding_window`` tokens (their KV is capped at it)."""
    num_parameters: int
    parameters_from: str
    """"config" (given) or "computed" (from the shapes: dense gated-MLP decoder)."""

    @classmethod
    def from_config(cls, config: dict, num_parameters: int | None = None) -> ModelShape:
        """The shape of a ``config.json`` mapping (a multimodal one's ``text_config``)."""
        if isinstance(config.get("text_config"), dict):
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}
        try:
            hidden = int(config["hidden_size"])
            layers = int(config["num_hidden_layers"])
            heads = int(config["num_attention_heads"])
            vocab = int(config["vocab_size"])
            intermediate = int(config["intermediate_size"])
        except KeyError as exc:
            raise PlanError(f"config.json has no {exc.args[0]!r}: not a decoder the planner knows") from None
        model_type = str(config.get("model_type", ""))
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        # Gemma ties its output layer to the embedding whether or not config.json says so.
        tied = bool(config.get("tie_word_embeddings", model_type.startswith("gemma")))
        window = config.get("sliding_window") if config.get("use_sliding_window", True) is not False else None
        sliding = _sliding_layers(config, model_type, layers) if window else 0
        given = num_parameters or config.get("_num_parameters") or config.get("num_parameters")
        if not given and any(k in config for k in ("num_local_experts", "num_experts", "n_routed_experts")):
            raise PlanError(f"{model_type}: a mixture-of-experts config; give its parameter count (_num_parameters)")
        shape = cls(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=layers,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=vocab,
            tie_word_embeddings=tied,
            max_position_embeddings=config.get("max_position_embeddings"),
            sliding_window=int(window) if window else None,
            sliding_layers=sliding,
            num_parameters=0,
            parameters_from="config" if given else "computed",
        )
        return dataclasses.replace(shape, num_parameters=int(given) if given else shape.computed_parameters())

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: attention, gated MLP (gate, up, down), norms."""
        h, hd = self.hidden_size, self.head_dim
        attention = h * self.num_attention_heads * hd * 2 + h * self.num_kv_heads * hd * 2  # q, o; k, v
        norms = (4 if self.model_type.startswith("gemma2") else 2) * h  # Gemma-2: pre/post norms around both
        return attention + 3 * h * self.intermediate_size + norms

    def embedding_parameters(self) -> int:
        """Parameters of the input embedding (the output layer has as many unless tied)."""
        return self.vocab_size * self.hidden_size

    def computed_parameters(self) -> int:
        """Total parameters from the shapes (a dense decoder; biases ignored)."""
        embeddings = self.embedding_parameters() * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * self.layer_parameters() + self.hidden_size

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1, layers: int | None = None) -> int:
        """KV cache bytes one token costs on one GPU: K and V of every layer (of ``layers``), of the
        GPU's share of KV heads (vLLM replicates a KV head when tp exceeds their number)."""
        heads_here = max(1, self.num_kv_heads // tp)
        return 2 * (self.num_layers if layers is None else layers) * heads_here * self.head_dim * dtype_bytes


def _sliding_layers(config: dict, model_type: str, layers: int) -> int:
    if isinstance(config.get("layer_types"), list):
        return sum(t == "sliding_attention" for t in config["layer_types"])
    if model_type == "gemma2":  # every other layer, starting with the first
        return (layers + 1) // 2
    if model_type in ("gemma3", "gemma3_text"):
        pattern = int(config.get("sliding_window_pattern") or 6)  # 5 local, then 1 global
        return layers - layers // pattern
    return layers  # Mistral-style: every layer slides


def load_model_config(weights: str, model_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """``config.json`` of ``weights`` and where it came from, without any download.

    Looked up in order: a local weights folder, the Hugging Face cache (after ``serve prepare``),
    the published values shipped in ``mapo/serving/model_configs/<org>--<name>.json``.
    """
    local = Path(model_dir or weights).expanduser()
    if (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text()), str(local / "config.json")
    if "/" in weights and not local.exists():
        with contextlib.suppress(Exception):  # no huggingface_hub, or a malformed id: fall through
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(weights, "config.json")
            if isinstance(cached, str):
                return json.loads(Path(cached).read_text()), cached
        shipped = MODEL_CONFIGS / (weights.replace("/", "--") + ".json")
        if shipped.is_file():
            return json.loads(shipped.read_text()), f"{shipped.name} (published values shipped with mapo)"
    raise PlanError(
        f"no config.json for {weights!r}: not a local folder, not in the Hugging Face cache "
        f"(run `python -m serve prepare`), and not in {MODEL_CONFIGS}"
    )


# ---------------------------------------------------------------------------------------------
# GPUs


@dataclass(frozen=True)
class GpuInfo:
    """The GPUs a server would use: how many, memory each (GiB), compute capability, name."""

    count: int
    memory_gib: float
    capability: float
    name: str = ""


def detect_gpu_info(ids: list[str] | None = None) -> GpuInfo | None:
    """The GPUs of this node (those of ``ids`` when given) from ``nvidia-smi``; None where it is absent.

    The smallest memory and capability of the set count (a server is as big as its smallest GPU).
    """
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # drivers before 510 know no compute_cap field
        out = _torch_gpu_rows(ids)
    every, rows = [], []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            with contextlib.suppress(ValueError):
                row = (parts[1], float(parts[2]) / 1024, float(parts[3]))
                every.append(row)
                if ids is None or parts[0] in ids:
                    rows.append(row)
    # CUDA_VISIBLE_DEVICES may number a job's GPUs differently from nvidia-smi (device cgroups): then the
    # node's GPUs stand in for them (a node's GPUs are alike as a rule; the smallest counts).
    rows = rows or every
    if not rows:
        return None
    return GpuInfo(
        count=len(rows),
        memory_gib=min(r[1] for r in rows),
        capability=min(r[2] for r in rows),
        name=rows[0][0],
    )


def _torch_gpu_rows(ids: list[str] | None) -> str:
    """nvidia-smi's rows from torch, in a child process: CUDA initialised here would hold GPU memory
    in the launcher for as long as vLLM runs."""
    code = (
        "import torch\n"
        "for i in range(torch.cuda.device_count()):\n"
        "    p = torch.cuda.get_device_properties(i)\n"
        "    print(f'{i}, {p.name}, {p.total_memory / 2**20:.0f}, {p.major}.{p.minor}')"
    )
    env = dict(os.environ)
    if ids is not None:  # the child numbers the visible devices from 0: keep the ids by renumbering back
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    if ids is None:
        return out
    lines = out.splitlines()
    return "\n".join(f"{ids[i]},{line.split(',', 1)[1]}" for i, line in enumerate(lines) if i < len(ids))


# ---------------------------------------------------------------------------------------------
# memory


@dataclass
class MemoryPlan:
    """The numbers of one (tensor, pipeline) parallel layout, per GPU (the fullest pipeline stage)."""

    model: str
    tp: int
    pp: int
    dtype: str
    max_model_len: int
    full_sequences: int
    gpu_mem_gib: float
    gpu_memory_utilization: float
    usable_gib: float
    weights_gib: float
    reserve_gib: float
    kv_gib: float
    kv_bytes_per_token: int
    kv_tokens: int
    needed_kv_tokens: int
    largest_max_model_len: int
    """The largest max_model_len whose ``full_sequences`` fit at this layout (0: not even the weights)."""
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """Room for the weights, the reserve and ``full_sequences`` full-length sequences."""
        return self.kv_tokens >= self.needed_kv_tokens

    @property
    def gpus(self) -> int:
        """GPUs this layout uses."""
        return self.tp * self.pp

    def summary(self) -> str:
        """One line with every number, for logs and refusals."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"{self.model} at TP {self.tp} x PP {self.pp} ({self.gpus} GPUs of {self.gpu_mem_gib:g} GiB, "
            f"{self.dtype}) {verdict}: per GPU {self.usable_gib:.1f} GiB usable "
            f"(x{self.gpu_memory_utilization:g}) - weights {self.weights_gib:.1f} - reserve {self.reserve_gib:.1f} "
            f"= {self.kv_gib:.1f} GiB KV cache at {self.kv_bytes_per_token / 1024:.0f} KiB/token = "
            f"{self.kv_tokens:,} tokens; needs {self.full_sequences} x max_model_len {self.max_model_len:,} "
            f"= {self.needed_kv_tokens:,}"
        )


def _layout(
    shape: ModelShape,
    model: str,
    *,
    tp: int,
    pp: int,
    gpu_mem_gib: float,
    dtype: DtypeChoice,
    max_model_len: int,
    gpu_memory_utilization: float,
    full_sequences: int,
) -> MemoryPlan:
    layers_per_stage = math.ceil(shape.num_layers / pp)
    embeddings = shape.embedding_parameters()
    # The first stage holds the embedding, the last the output layer (a copy of it when tied);
    # with one stage both, once if tied. Everything is split across the tp GPUs of a stage.
    outer = embeddings if pp > 1 or shape.tie_word_embeddings else 2 * embeddings
    stage_parameters = layers_per_stage * shape.layer_parameters() + outer + shape.hidden_size
    if shape.parameters_from == "config":  # scale to the published count (biases, unusual layers)
        stage_parameters = round(stage_parameters * shape.num_parameters / shape.computed_parameters())
    weights = stage_parameters * dtype.bytes / tp
    # Peaks of vLLM's profiling run: one batch of activations (its max_num_batched_tokens default:
    # 8192 on >= 70 GiB cards, 2048 below) and the sampler's float32 logits for max_num_seqs (1024 / 256).
    big = gpu_mem_gib >= 70
    batch_tokens, seqs = (8192, 1024) if big else (2048, 256)
    activations = batch_tokens * (2 * shape.hidden_size + 2 * shape.intermediate_size // tp) * dtype.bytes
    sampler = seqs * shape.vocab_size * 4 * 2
    reserve = BASE_RESERVE_GIB * GIB + activations + sampler
    usable = gpu_mem_gib * gpu_memory_utilization * GIB
    kv_bytes = max(0.0, usable - weights - reserve)
    # Sliding-window layers keep at most `sliding_window` tokens; count them at full length per token
    # and subtract what the window saves for a full-length sequence.
    per_token = shape.kv_bytes_per_token(dtype.bytes, tp, layers_per_stage)
    kv_tokens = int(kv_bytes // per_token)
    needed = full_sequences * max_model_len
    if shape.sliding_window and shape.sliding_layers and max_model_len > shape.sliding_window:
        sliding_share = min(layers_per_stage, shape.sliding_layers) / layers_per_stage
        saved = sliding_share * (max_model_len - shape.sliding_window) / max_model_len
        needed = math.ceil(needed * (1 - saved))
    plan = MemoryPlan(
        model=model,
        tp=tp,
        pp=pp,
        dtype=dtype.dtype,
        max_model_len=max_model_len,
        full_sequences=full_sequences,
        gpu_mem_gib=gpu_mem_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        usable_gib=usable / GIB,
        weights_gib=weights / GIB,
        reserve_gib=reserve / GIB,
        kv_gib=kv_bytes / GIB,
        kv_bytes_per_token=per_token,
        kv_tokens=kv_tokens,
        needed_kv_tokens=needed,
        largest_max_model_len=kv_tokens // full_sequences,
    )
    if dtype.warning:
        plan.notes.append(dtype.warning)
    return plan


def _tp_candidates(shape: ModelShape, gpus: int) -> list[int]:
    """Tensor-parallel sizes to try for this model on at most ``gpus`` GPUs: the powers of two that
    divide its attention heads (vLLM needs the heads to split evenly)."""
    sizes, tp = [], 1
    while tp <= gpus:
        if shape.num_attention_heads % tp == 0:
            sizes.append(tp)
        tp *= 2
    return sizes


def plan_memory(
    shape: ModelShape,
    *,
    model: str,
    gpu_mem_gib: float,
    gpus: int,
    dtype: DtypeChoice,
    tp: int | None = None,
    pp: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    full_sequences: int = FULL_SEQUENCES,
) -> MemoryPlan:
    """Check the layout ``tp`` x ``pp`` (or choose the smallest tp that fits on ``gpus`` / ``pp``).

    ``max_model_len`` None means the model's own ``max_position_embeddings`` (vLLM's default).
    Raises :class:`PlanError` with the numbers when nothing fits; the returned plan always fits.
    """
    util = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if not 0 < util <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {util}")
    length = max_model_len or shape.max_position_embeddings
    if not length:
        raise PlanError(f"{model}: no max_model_len and config.json gives no max_position_embeddings")
    if shape.max_position_embeddings and length > shape.max_position_embeddings:
        raise PlanError(
            f"{model}: max_model_len {length:,} is over the model's max_position_embeddings "
            f"{shape.max_position_embeddings:,}"
        )
    if pp < 1 or shape.num_layers < pp:
        raise PlanError(f"{model}: pipeline_parallel_size {pp} must be in 1..{shape.num_layers} (its layers)")

    def layout(size: int) -> MemoryPlan:
        return _layout(
            shape,
            model,
            tp=size,
            pp=pp,
            gpu_mem_gib=gpu_mem_gib,
            dtype=dtype,
            max_model_len=length,
            gpu_memory_utilization=util,
            full_sequences=full_sequences,
        )

    if tp is not None:
        if shape.num_attention_heads % tp:
            raise PlanError(f"{model}: tensor_parallel_size {tp} does not divide its {shape.num_attention_heads} heads")
        if tp * pp > gpus:
            raise PlanError(f"{model}: TP {tp} x PP {pp} needs {tp * pp} GPUs, {gpus} given")
        plan = layout(tp)
        if plan.fits:
            return plan
        better = [p for p in map(layout, _tp_candidates(shape, shape.num_attention_heads)) if p.fits]
        hint = f"; TP {better[0].tp} ({better[0].gpus} GPUs) fits" if better else ""
        raise PlanError(_refusal(plan) + hint)
    candidates = [layout(size) for size in _tp_candidates(shape, gpus // pp)]
    if not candidates:
        raise PlanError(f"{model}: no tensor_parallel_size fits {gpus} GPUs at PP {pp}")
    for plan in candidates:
        if plan.fits:
            plan.notes.append(f"tensor_parallel_size {plan.tp} chosen: the smallest that fits")
            return plan
    raise PlanError(_refusal(candidates[-1]) + f" (the largest layout on {gpus} GPUs)")


def _refusal(plan: MemoryPlan) -> str:
    if plan.kv_tokens <= 0:
        why = "the weights and reserve alone leave no KV cache"
    elif plan.largest_max_model_len >= 1:
        why = f"the largest max_model_len for {plan.full_sequences} sequences here is {plan.largest_max_model_len:,}"
    else:
        why = "not even one token of KV cache per sequence"
    return (
        f"{plan.summary()}: {why}; use more GPUs (tensor_parallel_size, or pipeline_parallel_size across "
        "nodes), a smaller max_model_len, or fewer full-length sequences (serve.full_sequences)"
    )
