"""Bad inputs and bad configs fail first: a clear error naming the file and line, or the
config key, before any model is called (the fake server must see zero requests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapo.core.config import (
    ClientConfig,
    ConfigError,
    FeedbackConfig,
    JudgeConfig,
    PromptSourceConfig,
    RolesConfig,
    RunConfig,
    SelectionConfig,
)
from mapo.data.sources import iter_prompts, validate_prompts
from mapo.runs.build import build
from tests.conftest import REPO, fake_model
from tests.fake_openai import FakeServer

pytestmark = pytest.mark.timeout(60)

GOOD = [{"id": "a", "prompt": "Name a colour."}, {"id": "b", "prompt": "Name a fruit."}]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """rows as JSON lines; raw_lines {line number (1-based): bytes} replace or add lines verbatim."""
    lines = [json.dumps(r).encode() for r in rows]
    for n, raw in sorted((raw_lines or {}).items()):
        lines.insert(n - 1, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def config(server: FakeServer, tmp_path: Path, path: Path | None = None, **kw) -> RunConfig:
    cfg = RunConfig(
        models={n: fake_model(server) for n in ("gen", "rev", "judge")},
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="file", path=str(path))
        if path
        else PromptSourceConfig(source="builtin", limit=2),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=2,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


async def refused(server: FakeServer, cfg: RunConfig, match: str) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as err:
        await build(cfg)
    assert server.n == 0, "a model was called before the bad input was reported"
    assert not (Path(cfg.output_dir) / "selections.jsonl").exists()
    return err.value


# ---- prompt files --------------------------------------------------------------------------------

BAD_FILES = {
    "broken_json": ({3: b'{"id": "c", "prompt": "unterminated'}, r"prompts\.jsonl:3: broken JSON"),
    "not_an_object": ({2: b'["a list", "not an object"]'}, r"prompts\.jsonl:2: expected a JSON object, got list"),
    "missing_column": (
        {3: b'{"id": "c", "text": "wrong column"}'},
        r"prompts\.jsonl:3: missing column 'prompt' \(prompts\.prompt_column\)",
    ),
    "empty_prompt": ({1: b'{"id": "c", "prompt": ""}'}, r"prompts\.jsonl:1: empty prompt"),
    "blank_prompt": ({2: b'{"id": "c", "prompt": "  \\n\\t "}'}, r"prompts\.jsonl:2: empty prompt"),
    "prompt_is_a_number": ({3: b'{"id": "c", "prompt": 42}'}, r"prompts\.jsonl:3: column 'prompt' is int, not text"),
    "prompt_is_null": ({3: b'{"id": "c", "prompt": null}'}, r"prompts\.jsonl:3: column 'prompt' is NoneType, not text"),
    "chat_without_user_turn": (
        {2: b'{"id": "c", "prompt": [{"role": "system", "content": "hi"}]}'},
        r"prompts\.jsonl:2: column 'prompt' is list, not text",
    ),
    "duplicate_id": ({3: b'{"id": "a", "prompt": "again"}'}, r"prompts\.jsonl:3: duplicate id 'a'"),
    "not_utf8": ({2: b'{"id": "c", "prompt": "caf\xe9 \xff"}'}, r"prompts\.jsonl:2: not UTF-8"),
    "one_megabyte_prompt": (
        {3: json.dumps({"id": "c", "prompt": "word " * 210_000}).encode()},
        r"prompts\.jsonl:3: prompt longer than prompts\.max_chars=100000 \(1050000 characters\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
async def test_bad_prompt_file_fails_naming_file_and_line(fake_server, tmp_path, case):
    raw, match = BAD_FILES[case]
    path = write_jsonl(tmp_path / "prompts.jsonl", GOOD, raw)
    err = await refused(fake_server, config(fake_server, tmp_path, path), match)
    assert str(path) in str(err)


async def test_bad_lines_are_skipped_and_counted_when_asked(fake_server, tmp_path):
    raw = {k: v[0] for k, v in BAD_FILES.items() if k not in ("broken_json", "not_an_object", "not_utf8")}
    rows = list(GOOD)
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(
        b"\n".join([json.dumps(r).encode() for r in rows] + [next(iter(v.values())) for v in raw.values()]) + b"\n"
    )
    cfg = config(fake_server, tmp_path, path)
    cfg.prompts.on_invalid = "skip"
    manifest = await build(cfg)
    assert manifest["status"] == "complete"
    assert manifest["prompts"]["read"] == 2 and manifest["prompts"]["skipped"] == len(raw)
    reasons = manifest["prompts"]["skip_reasons"]
    assert sum(reasons.values()) == len(raw)
    assert {"missing column 'prompt'", "empty prompt in column 'prompt'", "duplicate id 'a'"} <= set(reasons)
    keys = [json.loads(x)["key"] for x in (tmp_path / "run" / "selections.jsonl").read_text().splitlines()]
    assert sorted(keys) == ["a", "b"]


async def test_a_prompt_under_the_size_limit_is_kept(fake_server, tmp_path):
    big = "word " * 15_000  # 75 000 characters: long, but under prompts.max_chars
    path = write_jsonl(tmp_path / "prompts.jsonl", [*GOOD, {"id": "big", "prompt": big}])
    assert validate_prompts(PromptSourceConfig(source="file", path=str(path))) == 3
    cfg = PromptSourceConfig(source="file", path=str(path), max_chars=1000)
    with pytest.raises(
        ConfigError, match=r"prompts\.jsonl:3: prompt longer than prompts\.max_chars=1000 \(75000 characters\)"
    ):
        validate_prompts(cfg)


@pytest.mark.parametrize("content", [b"", b"\n\n", b'{"id": "a", "prompt": ""}\n'])
async def test_a_file_with_no_usable_prompt_is_an_error(fake_server, tmp_path, content):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    cfg = config(fake_server, tmp_path, path)
    cfg.prompts.on_invalid = "skip"
    await refused(fake_server, cfg, rf"no usable prompts in {path}")


async def test_missing_id_column_is_named(fake_server, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"uid": "a", "prompt": "x"}, {"prompt": "y"}])
    cfg = config(fake_server, tmp_path, path)
    cfg.prompts.id_column = "uid"
    await refused(fake_server, cfg, r"prompts\.jsonl:2: missing column 'uid' \(prompts\.id_column\)")


async def test_missing_or_unsupported_file(fake_server, tmp_path):
    await refused(
        fake_server,
        config(fake_server, tmp_path, tmp_path / "nope.jsonl"),
        r"prompts\.path: no such file .*nope\.jsonl",
    )
    txt = tmp_path / "prompts.txt"
    txt.write_text("hello\n")
    await refused(fake_server, config(fake_server, tmp_path, txt), r"prompts\.path: unsupported file type '\.txt'")


async def test_csv_missing_column_names_file_and_row(fake_server, tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("id,question\na,Name a colour.\n")
    await refused(fake_server, config(fake_server, tmp_path, path), r"prompts\.csv:2: missing column 'prompt'")


def test_prompts_stream_lazily(tmp_path):
    """A broken line far down the file is only met when reached: the pipeline reads the whole
    source once up front (validate_prompts) so it fails before the first call."""
    path = write_jsonl(tmp_path / "p.jsonl", GOOD, {3: b"{broken"})
    it = iter_prompts(PromptSourceConfig(source="file", path=str(path)))
    assert next(it).id == "a"


# ---- configs ------------------------------------------------------------------------------------


async def test_unknown_models_in_roles(fake_server, tmp_path):
    await refused(
        fake_server,
        config(fake_server, tmp_path, roles=RolesConfig(generator="ghost", reviewers=["rev"], judge="judge")),
        r"roles\.generator='ghost' is not a known model; known: gen, judge, rev",
    )
    await refused(
        fake_server,
        config(fake_server, tmp_path, roles=RolesConfig(generator="gen", reviewers=["rev", "ghost"], judge="judge")),
        r"roles\.reviewers\[1\]='ghost' is not a known model",
    )
    await refused(
        fake_server,
        config(fake_server, tmp_path, roles=RolesConfig(generator="gen", reviewers=[], judge="judge")),
        r"roles\.reviewers must list 1 or 2 models",
    )


BAD_CONFIGS = {
    "unknown_strategy": (
        dict(judge=JudgeConfig(strategy="vibes")),
        r"judge\.strategy='vibes'; allowed: direct, independent, combined, prometheus_absolute",
    ),
    "unknown_selection": (dict(selection=SelectionConfig(method="coin")), r"selection\.method='coin'"),
    "zero_iterations": (dict(feedback=FeedbackConfig(iterations=0)), r"feedback\.iterations must be >= 1, got 0"),
    "bad_scale": (dict(judge=JudgeConfig(scale=7)), r"judge\.scale must be 5, 10 or 100, got 7"),
    "zero_items_in_flight": (dict(max_items_in_flight=0), r"max_items_in_flight must be >= 1, got 0"),
    "bad_constrained": (
        dict(judge=JudgeConfig(constrained="maybe")),
        r"judge\.constrained='maybe'; allowed: auto, on, off",
    ),
    "unknown_judge_prompt_set": (
        dict(judge=JudgeConfig(prompt_set="papr")),
        r"judge\.prompt_set='papr': no folder prompts/papr",
    ),
    "unknown_feedback_prompt_set": (
        dict(feedback=FeedbackConfig(prompt_set="papr")),
        r"feedback\.prompt_set='papr': no folder prompts/papr",
    ),
    "unknown_source": (
        dict(prompts=PromptSourceConfig(source="ftp")),
        r"prompts\.source='ftp'; allowed: builtin, file, hf",
    ),
    "bad_on_invalid": (dict(prompts=PromptSourceConfig(on_invalid="ignore")), r"prompts\.on_invalid='ignore'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
async def test_bad_config_fails_naming_the_key(fake_server, tmp_path, case):
    overrides, match = BAD_CONFIGS[case]
    await refused(fake_server, config(fake_server, tmp_path, **overrides), match)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("max_concurrency", -1, r"models\.rev\.max_concurrency must be >= 1, got -1"),
        ("max_concurrency", 0, r"models\.rev\.max_concurrency must be >= 1, got 0"),
        ("timeout_s", 0.0, r"models\.rev\.timeout_s must be > 0"),
        (
            "api_key_env",
            "MAPO_TEST_KEY_THAT_IS_NOT_SET",
            r"models\.rev\.api_key_env: environment variable MAPO_TEST_KEY_THAT_IS_NOT_SET is not set",
        ),
    ],
)
async def test_bad_model_settings_fail_naming_the_key(fake_server, tmp_path, field, value, match):
    cfg = config(fake_server, tmp_path)
    setattr(cfg.models["rev"], field, value)
    await refused(fake_server, cfg, match)


async def test_model_with_both_or_neither_endpoint(fake_server, tmp_path):
    cfg = config(fake_server, tmp_path)
    cfg.models["judge"].endpoint = "judge"
    await refused(fake_server, cfg, r"models\.judge: set exactly one of base_url and endpoint")
    cfg = config(fake_server, tmp_path)
    cfg.models["judge"].base_url = None
    await refused(fake_server, cfg, r"models\.judge: set exactly one of base_url and endpoint")


# ---- the command line (Hydra): typos and wrong types fail at start, naming the key --------------------


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from mapo.core.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("build", overrides=["output_dir=unused", *overrides])
        return OmegaConf.to_object(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("colour=blue", r"Could not override 'colour'"),
        ("judge.stratgy=direct", r"Could not override 'judge\.stratgy'"),
        ("roles.critic=gpt-4o", r"Could not override 'roles\.critic'"),
        ("feedback.iterations=three", r"feedback\.iterations"),
        ("models.smollm2-135m.max_concurrency=lots", r"max_concurrency"),
        ("prompts.limit=[1,2]", r"prompts\.limit"),
    ],
)
def test_cli_typos_and_wrong_types_are_refused_at_compose(override, match):
    with pytest.raises(Exception, match=match):
        compose([override])


@pytest.mark.parametrize(
    "override,key",
    [
        ("+colour=blue", "colour"),
        ("+judge.stratgy=direct", "judge.stratgy"),
        ("+models.smollm2-135m.generation.temprature=1", "models.smollm2-135m.generation.temprature"),
    ],
)
async def test_keys_forced_in_with_plus_are_still_refused(fake_server, tmp_path, override, key):
    """Hydra's ``+key=value`` adds a key even to a typed config; validate() names it."""
    cfg = compose([override])
    cfg.models = {**cfg.models, **config(fake_server, tmp_path).models}
    cfg.roles = RolesConfig(generator="gen", reviewers=["rev"], judge="judge")
    cfg.output_dir = str(tmp_path / "run")
    await refused(fake_server, cfg, rf"unknown config key\(s\): {key.replace('.', '[.]')} ")


def test_composed_build_config_is_valid():
    cfg = compose(["feedback.iterations=2"])
    assert cfg.feedback.iterations == 2 and "smollm2-135m" in cfg.models


@pytest.mark.parametrize(
    "override,code,match",
    [
        ("colour=blue", 2, "Could not override 'colour'"),
        ("+judge.stratgy=direct", 2, "unknown config key(s): judge.stratgy"),
        (
            "judge.strategy=vibes",
            2,
            "Invalid value 'vibes', expected one of [direct, independent, combined, prometheus_absolute",
        ),
        ("models.gemma3-270m.max_concurrency=-4", 2, "models.gemma3-270m.max_concurrency must be >= 1, got -4"),
    ],
)
def test_cli_bad_config_exits_before_any_model_call(tmp_path, override, code, match):
    with FakeServer() as server:
        args = [
            sys.executable,
            "-m",
            "mapo",
            "build",
            "client.progress=off",
            f"client.cache_path={tmp_path / 'c.sqlite'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            override,
        ]
        for m in ("smollm2-135m", "gemma3-270m"):
            args += [f"models.{m}.endpoint=null", f"models.{m}.base_url={server.base_url}"]
        env = {**os.environ, "MAPO_CACHE": str(tmp_path / "mc"), "HF_DATASETS_OFFLINE": "1"}
        p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert server.n == 0
    assert p.returncode == code, p.stdout[-2000:] + p.stderr[-2000:]
    assert match in p.stdout + p.stderr
    assert not (tmp_path / "run" / "selections.jsonl").exists()
