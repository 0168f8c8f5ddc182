"""Model twins (mapo/serving/twins.py): built here, nothing downloaded, faithful where serving looks."""

from __future__ import annotations

import json

import pytest

from mapo.serving import launch, twins, weights

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {family: twins.build_twin(family, root / family) for family in twins.FAMILIES}


def test_llama31_twin_keeps_the_architecture_rope_scaling_tokens_and_template(built):
    from transformers import AutoTokenizer

    folder = built["llama31"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    rope = config.get("rope_scaling") or config["rope_parameters"]
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    assert (rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]) == (
        1.0,
        4.0,
        8192,
    )
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == (twins.TEMPLATES / "llama-3.1-instruct.jinja").read_text()
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Score: 7.5"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert text.endswith("Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nScore: 7.5<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
    ids = tok(text, add_special_tokens=False).input_ids
    for special in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert tok.convert_tokens_to_ids(special) in ids, special  # one token each, not spelled out
    assert ids.count(tok.bos_token_id) == 1
    stops = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|eot_id|>") in stops
    assert tok.decode(tok("Ünïcode 0.5 {x}", add_special_tokens=False).input_ids) == "Ünïcode 0.5 {x}"


def test_gemma2_twin_keeps_its_quirks_and_rejects_a_system_message(built):
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    folder = built["gemma2"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Gemma2ForCausalLM"]
    assert config["attn_logit_softcapping"] == 50.0 and config["final_logit_softcapping"] == 30.0
    assert config["query_pre_attn_scalar"] != config["head_dim"]
    assert config["sliding_window"] < 2048  # below the twin's max_model_len: the window really cuts
    assert "sliding_attention" in config["layer_types"] and "full_attention" in config["layer_types"]
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == (twins.TEMPLATES / "gemma-2-it.jinja").read_text()
    with pytest.raises(TemplateError, match="System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    stops = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert set(stops) == {tok.convert_tokens_to_ids("<eos>"), tok.convert_tokens_to_ids("<end_of_turn>")}


def test_a_twin_is_built_once_into_the_cache_and_unknown_families_are_refused(tmp_path):
    folder = weights.prepare("llama31-8b-twin", "twin:llama31")
    assert folder == str(weights.cache_root() / "models" / "llama31-8b-twin")
    assert weights.resolve("llama31-8b-twin", "twin:llama31") == folder
    stamp = (tmp_path / "mapo-cache" / "models" / "llama31-8b-twin" / "model.safetensors").stat().st_mtime_ns
    assert weights.prepare("llama31-8b-twin", "twin:llama31") == folder  # cached: not rebuilt
    assert (weights.cache_root() / "models" / "llama31-8b-twin" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(weights.WeightsError, match="unknown twin family 'mistral'"):
        weights.prepare("x", "twin:mistral")


def test_the_twin_configs_are_servable_like_the_embedded_models():
    specs = launch.load_specs()
    for name, source in (("llama31-8b-twin", "twin:llama31"), ("gemma-2-9b-twin", "twin:gemma2")):
        spec = specs[name]
        assert spec.weights == source and spec.chat_template is None  # the template travels in the tokenizer
        assert spec.max_model_len == 2048
        assert weights.resolve(name, source) is None  # not built yet: `serve up` prepares it


def test_a_twin_of_an_older_builder_is_rebuilt(monkeypatch):
    folder = weights.prepare("gemma-2-9b-twin", "twin:gemma2")
    monkeypatch.setattr(twins, "VERSION", twins.VERSION + 1)
    assert weights.resolve("gemma-2-9b-twin", "twin:gemma2") is None  # stale: `serve up` prepares it again
    assert weights.prepare("gemma-2-9b-twin", "twin:gemma2") == folder
    assert (
        json.loads((weights.cache_root() / "models" / "gemma-2-9b-twin" / "mapo-weights.json").read_text())[
            "twin_version"
        ]
        == twins.VERSION
    )


def test_mapo_answer_formats_fit_the_twins_max_tokens(built):
    """The constrained judge answer has ~48 tokens of structure (parsers.text_budget): with the twins' vocabulary the
    section heads are a few tokens each, so a judgement fits the twins' max_tokens (at 48 every one was cut)."""
    from transformers import AutoTokenizer

    from mapo.core.parsers import text_budget

    structure = "### Evaluation Evidence:\n\n\n### Score Assistant A:\n10/10\n\n### Score Assistant B:\n10/10"
    import yaml

    from tests.conftest import REPO

    for family, conf in (("llama31", "llama31-8b-twin"), ("gemma2", "gemma-2-9b-twin")):
        tok = AutoTokenizer.from_pretrained(built[family])
        limit = yaml.safe_load((REPO / "conf" / "model" / f"{conf}.yaml").read_text())[conf]["generation"]["max_tokens"]
        assert len(tok(structure, add_special_tokens=False).input_ids) <= 48 < limit
        assert text_budget(limit) >= 64  # room for an evidence text before the scores
