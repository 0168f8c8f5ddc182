from __future__ import annotations

from mapo.core.config import FeedbackConfig
from mapo.generation.feedback import FeedbackLoop
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer


def review(score: float, fb: str) -> str:
    return f"### Evaluation:\nok\n\n### Overall Score:\n{score}/10\n\n### Feedback:\n{fb}"


async def run_loop(tmp_path, responder, reviewers=("r1",), **cfg):
    server = FakeServer(responder=responder).start()
    models = {n: fake_model(server) for n in ("g", "r1", "r2")}
    tmp_path.mkdir(parents=True, exist_ok=True)
    client = LLMClient(models, cache=ResponseCache(tmp_path / "c.sqlite"))
    loop = FeedbackLoop(client, "g", list(reviewers), FeedbackConfig(**cfg))
    try:
        return await loop.run("Write a haiku."), server
    finally:
        server.stop()


def script(req):
    msgs = req["messages"]
    if msgs[0]["role"] == "system":  # reviewer
        n = msgs[1]["content"].count("v")
        return review(5.0 + n, f"fb{n}")
    return "v" * (len(msgs) // 2 + 1)  # generator: one more 'v' per revision


async def test_loop_keeps_every_iteration_and_grows_one_conversation(tmp_path):
    result, server = await run_loop(tmp_path, script)
    assert [it.response for it in result.iterations] == ["v", "vv", "vvv"]
    assert [it.score for it in result.iterations] == [6.0, 7.0, 8.0]
    assert result.iterations[0].reviews[0].feedback == "fb1"


async def test_revision_message_carries_the_feedback(tmp_path):
    seen = []

    def spy(req):
        if req["messages"][0]["role"] != "system":
            seen.append(req["messages"])
        return script(req)

    await run_loop(tmp_path, spy)
    last = seen[-1]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert "[Start of Feedback]\nfb2\n[End of Feedback]" in last[-1]["content"]


async def test_restate_set_ends_each_revision_message_with_the_question(tmp_path):
    """prompts/restate: the feedback, then the question again, last (one and two reviewers); the paper's own
    message is unchanged (no question in it)."""
    for reviewers in (("r1",), ("r1", "r2")):
        seen: list[str] = []

        def spy(req, seen=seen):
            if req["messages"][0]["role"] != "system":
                seen.append(req["messages"][-1]["content"])
            return script(req)

        await run_loop(tmp_path / str(len(reviewers)), spy, reviewers=reviewers, prompt_set="restate")
        assert seen[0] == "Write a haiku."  # the first request is the question alone
        assert all(m.endswith("Reply with the answer only.\n\nWrite a haiku.") for m in seen[1:]) and len(seen) == 3
        assert seen[-1].startswith("Feedback on your response:\nfb2\n")
    paper: list[str] = []

    def spy_paper(req):
        if req["messages"][0]["role"] != "system":
            paper.append(req["messages"][-1]["content"])
        return script(req)

    await run_loop(tmp_path / "paper", spy_paper)
    assert all("Write a haiku." not in m for m in paper[1:])


async def test_two_reviewers_double_feedback(tmp_path):
    seen = []

    def spy(req):
        if req["messages"][0]["role"] != "system":
            seen.append(req["messages"][-1]["content"])
        return script(req)

    result, _ = await run_loop(tmp_path, spy, reviewers=("r1", "r2"))
    assert all(len(it.reviews) == 2 for it in result.iterations)
    assert "[Start of Assistant 1's Feedback]" in seen[1] and "[Start of Assistant 2's Feedback]" in seen[1]


async def test_early_stop_on_score(tmp_path):
    result, _ = await run_loop(tmp_path, script, early_stop_score=7.0)
    assert len(result.iterations) == 2 and result.stopped_early


async def test_unparseable_review_is_a_failure_not_a_score(tmp_path):
    def bad(req):
        return "great job!" if req["messages"][0]["role"] == "system" else "resp"

    result, _ = await run_loop(tmp_path, bad, reask=1)
    r = result.iterations[0].reviews[0]
    assert r.score is None and r.failure and r.raw == ["great job!", "great job!"]
    assert result.iterations[0].score is None


async def test_generator_sampling_reaches_the_generator_only(tmp_path):
    from mapo.core.config import SamplingOverrides

    sent: list[tuple[str, dict]] = []

    def spy(req):
        sent.append(("reviewer" if req["messages"][0]["role"] == "system" else "generator", req))
        return script(req)

    sampling = SamplingOverrides(repetition_penalty=1.3, frequency_penalty=0.5)
    await run_loop(tmp_path, spy, generator_sampling=sampling)
    gen = [r for who, r in sent if who == "generator"]
    rev = [r for who, r in sent if who == "reviewer"]
    assert len(gen) == 3 and all(r["repetition_penalty"] == 1.3 and r["frequency_penalty"] == 0.5 for r in gen)
    assert rev and not any("repetition_penalty" in r or "frequency_penalty" in r for r in rev)


async def test_no_generator_sampling_sends_no_penalty(tmp_path):
    sent = []

    def spy(req):
        sent.append(req)
        return script(req)

    await run_loop(tmp_path, spy)
    assert sent and not any(
        k in r for r in sent for k in ("repetition_penalty", "frequency_penalty", "presence_penalty")
    )
