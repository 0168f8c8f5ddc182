"""Peers: mapo against the tools users would pick instead, on one server, with the same requests.

Two stages, each run by every peer in its own process against ONE OpenAI-compatible server:

  judge   combined-scoring judge prompts (prompts/paper/judge_combined.system + judge_pair.user,
          rendered through mapo.core.prompts) over --pairs pairs
  chain   generate -> review -> revise over --prompts prompts (prompts/instructions/builtin.jsonl,
          cycled), reviewer prompts from prompts/paper/, the same three messages for every peer

Peers, each as its own users would run it, configured for throughput from its documentation:

  mapo        LLMClient + run_pool (the bounded item pool the commands use); the chain runs per
              item, items overlapping (a finished generation goes to review at once)
  distilabel  a Pipeline of ChatGeneration steps on OpenAILLM, input_batch_size = --concurrency
  curator     curator.LLM on the "openai" backend (base_url), rate limits opened, max_concurrent_requests
              = --concurrency, truncated answers accepted; the chain is three successive LLM calls
  raw-chain   (chain only) the chain written by hand on the bare openai client: every item's three
              calls in order, all items at once: the best a tool that respects the chain's
              dependencies can do, so "ratio to raw chain" is a tool's own overhead
  ceiling     the stage's requests fired raw (openai client) with the same in-flight bound and no
              dependencies: what the server does with this token mix (for the chain, the requests
              recorded from an earlier peer's chain; no dependent chain can reach it)

All peers send temperature 0, the same max_tokens and no structured output. distilabel and curator
are installed from PyPI, pinned (bench/peers_requirements/<peer>.txt), each in its own virtual
environment under ${MAPO_CACHE:-~/.cache/mapo}/bench-venvs/<peer>, never in mapo's.

A small proxy in front of the server counts, on the server side, the requests in flight (the most
at once), the generated tokens (usage.completion_tokens) and the exact request bodies (so the
report says whether every peer sent the same requests). Each phase starts from a cold prefix
cache (POST /reset_prefix_cache, vLLM dev mode: the bench starts its own float32 vLLM-CPU server
that way unless --base-url names a running one). Repetitions are interleaved (the order of the
peers alternates), and the CPU model and flags (lscpu) are recorded.

    .venv/bin/python bench/peers.py --pairs 64 --prompts 32 --reps 2         # the full benchmark
    .venv/bin/python bench/peers.py --fake --pairs 8 --prompts 4 --reps 1     # functional check
    .venv/bin/python bench/peers.py --clientbound --requests 4000 --reps 2    # client-bound mode (bench/clientbound.py)

Writes bench/results/peers.json and peers.md (--out). Phase logs go to <cache>/bench-peers/logs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).resolve().parent / "peers_requirements"
PEERS = ("mapo", "distilabel", "curator", "raw-chain", "ceiling")
CHAIN_ONLY = ("raw-chain",)
STAGES = ("judge", "chain")
VENV_PEERS = ("distilabel", "curator")
"""Peers installed in their own virtual environment; mapo and the ceiling run in mapo's."""

Messages = list[dict[str, str]]


# ---------------------------------------------------------------------------------------------
# The chain, the same for every peer. Only the standard library here: it runs in every venv.


def gen_messages(question: str) -> Messages:
    return [{"role": "user", "content": question}]


def review_messages(spec: dict, question: str, response: str) -> Messages:
    chain = spec["chain"]
    return [
        {"role": "system", "content": chain["reviewer_system"]},
        {"role": "user", "content": chain["reviewer_user"].format(question=question, response=response)},
    ]


def feedback_of(review: str) -> str:
    """The feedback section of a review (the whole review when it has none), as mapo's loop passes it."""
    _, sep, tail = review.partition("### Feedback:")
    return tail.strip() if sep and tail.strip() else review.strip()


def revise_messages(spec: dict, question: str, response: str, review: str) -> Messages:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": response},
        {"role": "user", "content": spec["chain"]["revise"].format(feedback=feedback_of(review))},
    ]


# ---------------------------------------------------------------------------------------------
# Workers: `peers.py --worker PEER` in the peer's own environment. Each returns
# {"work_s": seconds of the tool's own run call, "texts": the stage's final outputs in order}.


def work_mapo(spec: dict, stage: str) -> dict:
    import asyncio

    from mapo.core.config import GenerationConfig, ModelConfig
    from mapo.llm.client import LLMClient
    from mapo.runs.runner import run_pool

    os.environ["PEERS_API_KEY"] = spec["api_key"]
    model = ModelConfig(
        served_name=spec["model"],
        base_url=spec["base_url"],
        api_key_env="PEERS_API_KEY",
        max_concurrency=spec["concurrency"],
        timeout_s=spec["timeout_s"],
        generation=GenerationConfig(temperature=0.0, max_tokens=spec["max_tokens"], seed=None),
    )
    n = len(spec["judge"]) if stage == "judge" else len(spec["chain"]["questions"])
    texts: list[str] = [""] * n

    async def judge(i: int, client: LLMClient) -> None:
        texts[i] = (await client.chat("m", spec["judge"][i], role="judge")).text

    async def chain(i: int, client: LLMClient) -> None:
        q = spec["chain"]["questions"][i]
        r = (await client.chat("m", cast(Any, gen_messages(q)), role="generator")).text
        review = (await client.chat("m", cast(Any, review_messages(spec, q, r)), role="reviewer")).text
        revise = revise_messages(spec, q, r, review)
        texts[i] = (await client.chat("m", cast(Any, revise), role="generator")).text

    async def run() -> float:
        async with LLMClient({"m": model}, cache=None) as client:
            worker = judge if stage == "judge" else chain
            t0 = time.perf_counter()
            await run_pool(range(n), lambda i: worker(i, client), spec["concurrency"])
            return time.perf_counter() - t0

    return {"work_s": asyncio.run(run()), "texts": texts}


def _bare_calls(spec: dict) -> tuple[Any, Callable[[Messages], Awaitable[str]]]:
    """The raw peers' client: a bare openai client and ``call(messages) -> text`` under a semaphore of
    width ``concurrency`` (create inside the running event loop; close the client when done)."""
    import asyncio

    import httpx
    import openai

    client = openai.AsyncOpenAI(
        base_url=spec["base_url"],
        api_key=spec["api_key"],
        max_retries=3,
        timeout=spec["timeout_s"],
        # openai>=3 types this as its httpx2 fork; it accepts a plain httpx client too
        http_client=httpx.AsyncClient(  # type: ignore[arg-type]
            limits=httpx.Limits(max_connections=spec["concurrency"] + 8)
        ),
    )
    sem = asyncio.Semaphore(spec["concurrency"])

    async def call(messages: Messages) -> str:
        async with sem:
            resp = await client.chat.completions.create(
                model=spec["model"], messages=cast(Any, messages), temperature=0.0, max_tokens=spec["max_tokens"]
            )
        return resp.choices[0].message.content or ""

    return client, call


def work_ceiling(spec: dict, stage: str) -> dict:
    import asyncio

    requests: list[Messages] = spec["judge"] if stage == "judge" else spec["replay"]
    texts: list[str] = [""] * len(requests)

    async def run() -> float:
        client, call = _bare_calls(spec)

        async def one(i: int) -> None:
            texts[i] = await call(requests[i])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(requests))))
        wall = time.perf_counter() - t0
        await client.close()
        return wall

    return {"work_s": asyncio.run(run()), "texts": texts}


def work_raw_chain(spec: dict, stage: str) -> dict:
    """The chain by hand: a bare openai client, each item's three calls in order, every item at once."""
    import asyncio

    questions = spec["chain"]["questions"]
    texts: list[str] = [""] * len(questions)

    async def run() -> float:
        client, call = _bare_calls(spec)

        async def item(i: int) -> None:
            q = questions[i]
            r = await call(gen_messages(q))
            review = await call(review_messages(spec, q, r))
            texts[i] = await call(revise_messages(spec, q, r, review))

        t0 = time.perf_counter()
        await asyncio.gather(*(item(i) for i in range(len(questions))))
        wall = time.perf_counter() - t0
        await client.close()
        return wall

    return {"work_s": asyncio.run(run()), "texts": texts}


try:  # only in distilabel's venv: its pipeline pickles steps, so the step class must live at module level
    from distilabel.steps import Step as _DistilabelStep
    from distilabel.steps import StepInput as _StepInput
except ImportError:
    _DistilabelStep = None

if _DistilabelStep is not None:

    class MakeMessages(_DistilabelStep):
        """distilabel step: the next request's messages, ``kind`` review (question + response) or revise."""

        kind: str
        chain_spec: dict

        @property
        def inputs(self) -> list[str]:
            return ["question", "response"] + (["review"] if self.kind == "revise" else [])

        @property
        def outputs(self) -> list[str]:
            return ["messages"]

        def process(self, inputs):
            spec = {"chain": self.chain_spec}
            for row in inputs:
                if self.kind == "review":
                    row["messages"] = review_messages(spec, row["question"], row["response"])
                else:
                    row["messages"] = revise_messages(spec, row["question"], row["response"], row["review"])
            yield inputs

    # distilabel finds the input parameter by its annotation object (a string under __future__ annotations)
    MakeMessages.process.__annotations__["inputs"] = _StepInput


def work_distilabel(spec: dict, stage: str) -> dict:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration

    # input_batch_size = the in-flight bound: a step sends a whole batch at once and waits for all of it
    batch = spec["distilabel_batch"] or spec["concurrency"]

    def llm() -> OpenAILLM:
        return OpenAILLM(
            model=spec["model"],
            base_url=spec["base_url"],
            api_key=spec["api_key"],
            timeout=int(spec["timeout_s"]),
            max_retries=3,
            generation_kwargs={"max_new_tokens": spec["max_tokens"], "temperature": 0.0},
        )

    def generation(name: str, output: str) -> ChatGeneration:
        return ChatGeneration(name=name, llm=llm(), input_batch_size=batch, output_mappings={"generation": output})

    with Pipeline(name=f"mapo-peers-{stage}") as pipeline:
        if stage == "judge":
            rows = [{"i": i, "messages": m} for i, m in enumerate(spec["judge"])]
            LoadDataFromDicts(data=rows, batch_size=batch) >> generation("judge", "text")
        else:
            rows = [
                {"i": i, "question": q, "messages": gen_messages(q)} for i, q in enumerate(spec["chain"]["questions"])
            ]
            (
                LoadDataFromDicts(data=rows, batch_size=batch)
                >> generation("generate", "response")
                >> MakeMessages(name="make_review", kind="review", chain_spec=spec["chain"], input_batch_size=batch)
                >> generation("review", "review")
                >> MakeMessages(name="make_revise", kind="revise", chain_spec=spec["chain"], input_batch_size=batch)
                >> generation("revise", "text")
            )
    t0 = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    wall = time.perf_counter() - t0
    out = distiset["default"]["train"]
    texts = [""] * len(rows)
    for i, text in zip(out["i"], out["text"], strict=True):
        texts[i] = text or ""
    return {"work_s": wall, "texts": texts}


def work_curator(spec: dict, stage: str) -> dict:
    import importlib.util

    # curator sizes its token limiter with tiktoken's cl100k_base, which tiktoken downloads on first
    # use; litellm (a curator dependency) ships that file: point tiktoken at it (no network needed)
    litellm = importlib.util.find_spec("litellm")
    if litellm is not None and litellm.origin:
        os.environ.setdefault(
            "TIKTOKEN_CACHE_DIR", str(Path(litellm.origin).parent / "litellm_core_utils" / "tokenizers")
        )
    from bespokelabs import curator

    backend_params = {
        "base_url": spec["base_url"],
        "api_key": spec["api_key"],
        "max_concurrent_requests": spec["concurrency"],
        # the rate limiters start empty and refill per second: open them so they never hold a request
        "max_requests_per_minute": 10**9,
        "max_tokens_per_minute": 10**12,
        "max_retries": 3,
        "request_timeout": int(spec["timeout_s"]),
        # the default also retries "length": an answer cut at max_tokens would be asked again, up to
        # max_retries times; every other peer keeps it
        "invalid_finish_reasons": ["content_filter"],
    }
    generation_params = {"temperature": 0.0, "max_tokens": spec["max_tokens"]}

    class Chat(curator.LLM):
        """Sends the row's messages; keeps the row and adds the answer under ``self.column``."""

        column = "text"

        def prompt(self, row: dict) -> Messages:
            return row["messages"]

        def parse(self, row: dict, response: str) -> dict:
            return {**row, self.column: response}

    def chat(column: str) -> Chat:
        llm = Chat(
            model_name=spec["model"],
            backend="openai",
            generation_params=generation_params,
            backend_params=backend_params,
        )
        llm.column = column
        return llm

    t0 = time.perf_counter()
    if stage == "judge":
        rows: Any = [{"i": i, "messages": m} for i, m in enumerate(spec["judge"])]
        ds = chat("text")(rows).dataset
    else:
        rows = [{"i": i, "question": q, "messages": gen_messages(q)} for i, q in enumerate(spec["chain"]["questions"])]
        ds = chat("response")(rows).dataset
        ds = ds.map(lambda r: {"messages": review_messages(spec, r["question"], r["response"])})
        ds = chat("review")(ds).dataset
        ds = ds.map(lambda r: {"messages": revise_messages(spec, r["question"], r["response"], r["review"])})
        ds = chat("text")(ds).dataset
    wall = time.perf_counter() - t0
    texts = [""] * len(rows)
    for i, text in zip(ds["i"], ds["text"], strict=True):
        texts[i] = text or ""
    return {"work_s": wall, "texts": texts}


WORKERS = {
    "mapo": work_mapo,
    "ceiling": work_ceiling,
    "raw-chain": work_raw_chain,
    "distilabel": work_distilabel,
    "curator": work_curator,
}


def worker_main(peer: str, stage: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cpu0 = time.process_time()
    result = WORKERS[peer](spec, stage)
    result["cpu_s"] = time.process_time() - cpu0  # this process's CPU over the run call (bench/clientbound.py)
    Path(result_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Orchestrator (mapo's environment).


class Proxy:
    """A pass-through HTTP proxy in front of the server that counts what the server sees.

    Per phase: requests in flight (the most at once), chat requests answered, generated tokens
    (usage.completion_tokens), first arrival to last answer, and every chat request body.
    """

    def __init__(self, upstream_root: str) -> None:
        self.upstream = upstream_root.rstrip("/")
        self.port = 0
        self.reset()

    def reset(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.answered = 0
        self.failed = 0
        self.tokens = 0
        self.first: float | None = None
        self.last: float | None = None
        self.bodies: list[dict] = []
        self.finish: dict[str, int] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        chat = request.method == "POST" and request.path.endswith("/chat/completions")
        parsed = json.loads(body) if chat and body else None
        counted = bool(parsed and parsed.get("messages"))  # curator probes rate limits with no messages
        if counted:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.first = self.first or time.perf_counter()
            self.bodies.append(parsed)  # type: ignore[arg-type]
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as resp:
                data = await resp.read()
                status, ctype = resp.status, resp.headers.get("Content-Type", "application/json")
        finally:
            if counted:
                self.in_flight -= 1
                self.last = time.perf_counter()
        if counted:
            if status == 200:
                reply = json.loads(data)
                self.answered += 1
                self.tokens += int((reply.get("usage") or {}).get("completion_tokens") or 0)
                for choice in reply.get("choices") or []:
                    reason = str(choice.get("finish_reason"))
                    self.finish[reason] = self.finish.get(reason, 0) + 1
            else:
                self.failed += 1
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    def start(self) -> Proxy:
        import asyncio
        import socket

        from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)

            async def setup() -> None:
                self._session = ClientSession(connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None))
                app = web.Application(client_max_size=64 * 2**20)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", self.port).start()

            loop.run_until_complete(setup())
            ready.set()
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        if not ready.wait(30):
            raise RuntimeError("the counting proxy did not start")
        return self


def cache_root() -> Path:
    return Path(os.environ.get("MAPO_CACHE") or Path.home() / ".cache" / "mapo").expanduser()


def ensure_venv(peer: str, venvs: Path) -> Path:
    """The peer's own virtual environment, (re)installed from its pinned requirements when they change."""
    req = REQUIREMENTS / f"{peer}.txt"
    venv = venvs / peer
    python = venv / "bin" / "python"
    stamp = venv / ".peers-requirements.sha256"
    want = hashlib.sha256(req.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    print(f"[peers] installing {peer} into {venv} from {req.relative_to(ROOT)} (once)", flush=True)
    # the base interpreter, not mapo's venv: the peer must not see mapo's packages
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(req)], check=True
    )
    stamp.write_text(want + "\n")
    return python


def peer_versions(python: Path, peer: str) -> dict[str, str]:
    names = {"distilabel": ["distilabel", "openai"], "curator": ["bespokelabs-curator", "litellm"]}[peer]
    code = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def host_info() -> dict[str, Any]:
    """CPU model and flags (lscpu), cores, load: the figures depend on them."""
    info: dict[str, Any] = {"node": platform.node(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return {**info, "lscpu": f"unavailable ({e})"}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("Flags", "").split()
    info.update(
        cpu_model=fields.get("Model name"),
        cpu_vendor=fields.get("Vendor ID"),
        flags=flags,
        bf16_native=any(f in flags for f in ("avx512_bf16", "amx_bf16")),
        lscpu=out,
    )
    return info


def load_pairs(path: str | None, n: int) -> tuple[list[tuple[str, str, str]], str]:
    """``n`` (question, answer a, answer b), cycled, all distinct: from a JSONL pairs file, else made up here."""
    rows: list[tuple[str, str, str]] = []
    if path is None:
        found = sorted((ROOT / "prompts").glob("**/*pairs*.jsonl"))
        path = str(found[0]) if found else None
    if path is not None:
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            d = json.loads(line)
            q = next((d[k] for k in ("question", "prompt", "instruction") if k in d), None)
            a = next((d[k] for k in ("response_a", "answer_a", "a", "first") if k in d), None)
            b = next((d[k] for k in ("response_b", "answer_b", "b", "second") if k in d), None)
            if not (q and a and b):
                raise SystemExit(f"{path}:{lineno}: a pair needs question/prompt, response_a and response_b")
            rows.append((q, a, b))
        source = str(Path(path).resolve().relative_to(ROOT) if Path(path).resolve().is_relative_to(ROOT) else path)
    else:
        questions = builtin_questions()
        for i, q in enumerate(questions):
            rows.append(
                (
                    q,
                    f"Here is my answer. {q} In short: start from the key idea, give one concrete example, "
                    "and finish with a one-line summary so the reader can check their understanding.",
                    f"Sure! This depends on the details, but usually you would first look at what is asked "
                    f"({q.lower()}), then keep it simple and clear. (variant {i})",
                )
            )
        source = "made up from prompts/instructions/builtin.jsonl"
    out = []
    for i in range(n):
        # past the file's end: answers swapped on odd cycles and the question marked, so no request repeats
        # (a repeated request would be sent once by mapo's client, which merges identical requests in flight)
        q, a, b = rows[i % len(rows)]
        k = i // len(rows)
        out.append((q if k == 0 else f"{q} (variant {k})", *((b, a) if k % 2 else (a, b))))
    return out, source


def builtin_questions() -> list[str]:
    lines = (ROOT / "prompts" / "instructions" / "builtin.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["prompt"] for x in lines if x.strip()]


def build_spec(args: argparse.Namespace, base_url: str, api_key: str) -> tuple[dict, str]:
    from mapo.core import prompts

    pairs, source = load_pairs(args.pairs_file, args.pairs)
    system = prompts.load("paper", "judge_combined.system").render(scale=10)
    user = prompts.load("paper", "judge_pair.user")
    judge = [
        [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": user.render(
                    question=prompts.quote_untrusted(q),
                    response_a=prompts.quote_untrusted(a),
                    response_b=prompts.quote_untrusted(b),
                ),
            },
        ]
        for q, a, b in pairs
    ]
    questions = builtin_questions()
    chain_q = [
        questions[i % len(questions)] + ("" if i < len(questions) else f" (variant {i // len(questions)})")
        for i in range(args.prompts)
    ]
    spec = {
        "base_url": base_url,
        "api_key": api_key,
        "model": args.served_name,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "distilabel_batch": args.distilabel_batch,
        "timeout_s": args.request_timeout,
        "judge": judge,
        "chain": {
            "questions": chain_q,
            "reviewer_system": prompts.load("paper", "reviewer.system").render(),
            "reviewer_user": prompts.load("paper", "reviewer.user").text,
            "revise": prompts.load("paper", "generator_single_feedback").text,
        },
        "replay": [],
    }
    return spec, source


def request_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()


def reset_prefix_cache(root: str, api_key: str) -> bool:
    import httpx

    try:
        r = httpx.post(f"{root}/reset_prefix_cache", headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def start_vllm(model: str, dtype: str, kvcache_gib: int | None) -> tuple[str, str, Any]:
    """Our own vLLM server for ``model`` (dev mode, for the prefix-cache reset) in ``dtype``."""
    from mapo.serving import launch, weights

    spec = launch.load_specs()[model]
    spec.extra_args = [*spec.extra_args, "--dtype", dtype]
    if weights.resolve(spec.name, spec.weights) is None:
        weights.prepare(spec.name, spec.weights)
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    if kvcache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kvcache_gib)
    registry = Path(tempfile.mkdtemp(prefix="mapo-peers-")) / "endpoints.json"
    server = launch.start_servers([spec], registry=registry, detach=False, timeout=1200)[0]
    key = server.endpoint.api_key() or "EMPTY"
    return server.endpoint.base_url, key, lambda: launch.stop_server(server, registry=registry)


def start_fake() -> tuple[str, str, Any]:
    import importlib

    sys.path.insert(0, str(ROOT))
    server = importlib.import_module("tests.fake_openai").FakeServer(api_key="peers-fake", latency_s=0.02).start()
    return server.base_url, "peers-fake", server.stop


def run_phase(
    args: argparse.Namespace, peer: str, stage: str, spec: dict, proxy: Proxy, root: str, pythons: dict, work: Path
) -> dict:
    """One peer on one stage, in its own process, from a cold prefix cache; the server-side counts."""
    cold = reset_prefix_cache(root, spec["api_key"])
    tag = f"{stage}-{peer}-{time.strftime('%H%M%S')}"
    spec_path, result_path, log_path = work / f"{tag}.spec.json", work / f"{tag}.result.json", work / f"{tag}.log"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        # curator: no response cache between phases, no live display, nothing sent home
        "CURATOR_CACHE_DIR": str(work / f"{tag}.curator"),
        "CURATOR_DISABLE_CACHE": "1",
        "CURATOR_DISABLE_RICH_DISPLAY": "1",
        "TELEMETRY_ENABLED": "false",
        # distilabel: its pipeline cache in the scratch folder (use_cache=False besides)
        "DISTILABEL_CACHE_DIR": str(work / f"{tag}.distilabel"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        str(pythons[peer]),
        str(Path(__file__).resolve()),
        "--worker",
        peer,
        "--stage",
        stage,
        "--spec",
        str(spec_path),
        "--result",
        str(result_path),
    ]
    proxy.reset()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rc: int | str
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.phase_timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    process_s = time.perf_counter() - t0
    spec_path.unlink(missing_ok=True)
    for scratch in (env["CURATOR_CACHE_DIR"], env["DISTILABEL_CACHE_DIR"]):  # the tools' own caches of this phase
        shutil.rmtree(scratch, ignore_errors=True)
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        print(f"[peers] {peer}/{stage} failed ({rc}); log {log_path}:\n{tail}", file=sys.stderr, flush=True)
        return {"peer": peer, "stage": stage, "error": f"exit {rc}, log {log_path}"}
    result = json.loads(result_path.read_text())
    result_path.unlink()
    wall = result["work_s"]
    span = (proxy.last - proxy.first) if proxy.first and proxy.last else None
    return {
        "peer": peer,
        "stage": stage,
        "wall_s": round(wall, 2),
        "process_s": round(process_s, 2),
        "server_span_s": round(span, 2) if span else None,
        "requests": proxy.answered,
        "failed_requests": proxy.failed,
        "tokens": proxy.tokens,
        "tok_per_s": round(proxy.tokens / wall, 1) if wall else None,
        "max_in_flight": proxy.peak,
        "finish_reasons": proxy.finish,
        "cold_prefix_cache": cold,
        "loadavg_1m_before": round(load, 2),
        "texts_sha": hashlib.sha256(json.dumps(result["texts"]).encode()).hexdigest()[:16],
        "_bodies": proxy.bodies,
        "log": str(log_path),
    }


def summarize(phases: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for stage in STAGES:
        rows = [p for p in phases if p["stage"] == stage and "error" not in p]
        for peer in dict.fromkeys(p["peer"] for p in rows):
            mine = [p for p in rows if p["peer"] == peer]
            ratios = [p["over_ceiling"] for p in mine if p.get("over_ceiling") is not None]
            raw = [p["over_raw_chain"] for p in mine if p.get("over_raw_chain") is not None]
            out.setdefault(stage, {})[peer] = {
                "wall_s": [p["wall_s"] for p in mine],
                "tok_per_s_mean": round(statistics.mean(p["tok_per_s"] for p in mine), 1),
                "over_ceiling_mean": round(statistics.mean(ratios), 3) if ratios else None,
                "over_raw_chain_mean": round(statistics.mean(raw), 3) if raw else None,
                "max_in_flight": max(p["max_in_flight"] for p in mine),
                "requests": mine[0]["requests"],
                "tokens": [p["tokens"] for p in mine],
            }
    return out


def markdown(res: dict) -> str:
    h = res["host"]
    lines = [
        "# Peer benchmark (bench/peers.py)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Server: {res['server']['kind']} {res['server'].get('model', '')}, dtype {res['server'].get('dtype')}; "
        f"{res['settings']['concurrency']} requests in flight at most for every peer; temperature 0, "
        f"max_tokens {res['settings']['max_tokens']}; judge pairs: {res['settings']['pairs_source']}.",
        f"CPU: {h.get('cpu_model')} ({h.get('cpus')} cores, native bfloat16: {h.get('bf16_native')}); "
        f"load average at start {h['loadavg'][0]:.2f}.",
        "Peers: " + ", ".join(f"{p} {v}" for p, v in res["versions"].items()) + ".",
        "",
        "wall = the tool's own run call (imports and process start excluded; process = the whole process); "
        "server span = first request in to last answer out; tok/s = generated tokens "
        "(counted at the server) / wall; ratio = tok/s over the ceiling's in the same repetition; vs raw chain = "
        "over the hand-written chain's (the chain's dependencies respected, no tool around it); "
        "in flight = the most requests the server had at once; same req = share of the peer's requests "
        "identical to the ceiling's.",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
    ]
    for stage in STAGES:
        rows = [p for p in res["phases"] if p["stage"] == stage]
        if not rows:
            continue
        title = {"judge": "Judge stage", "chain": "Generate -> review -> revise chain"}[stage]
        lines += [
            f"## {title}",
            "",
            "| rep | peer | wall s | process s | server span s | requests | tokens | tok/s | ratio | vs raw chain "
            "| in flight | same req | load before |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in rows:
            if "error" in p:
                lines.append(f"| {p['rep']} | {p['peer']} | failed: {p['error']} | | | | | | | | | | |")
                continue
            same = p.get("same_requests_as_ceiling")
            lines.append(
                f"| {p['rep']} | {p['peer']} | {p['wall_s']} | {p['process_s']} | {p['server_span_s']} "
                f"| {p['requests']} | {p['tokens']} | {p['tok_per_s']} | {p.get('over_ceiling', '')} "
                f"| {p.get('over_raw_chain', '')} | {p['max_in_flight']} | {'' if same is None else f'{same:.0%}'} | {p['loadavg_1m_before']} |"
            )
        shas = {p["texts_sha"] for p in rows if "error" not in p and p["peer"] != "ceiling"}
        if shas:
            same_out = "yes" if len(shas) == 1 else f"no ({len(shas)} different)"
            lines += ["", f"Final outputs identical for every peer but the ceiling (a flat replay): {same_out}."]
        lines.append("")
    lines += [
        "## Mean over repetitions",
        "",
        "| stage | peer | tok/s | ratio to ceiling | ratio to raw chain | in flight |",
        "|---|---|---|---|---|---|",
    ]
    for stage, peers in res["summary"].items():
        for peer, s in peers.items():
            lines.append(
                f"| {stage} | {peer} | {s['tok_per_s_mean']} | {s['over_ceiling_mean']} "
                f"| {s.get('over_raw_chain_mean') or ''} | {s['max_in_flight']} |"
            )
    return "\n".join(lines) + "\n"


def orchestrate(args: argparse.Namespace) -> dict:
    venvs = Path(args.venvs).expanduser() if args.venvs else cache_root() / "bench-venvs"
    work = cache_root() / "bench-peers" / "logs"
    work.mkdir(parents=True, exist_ok=True)
    pythons: dict[str, Path] = {p: Path(sys.executable) for p in ("mapo", "ceiling", "raw-chain")}
    versions: dict[str, Any] = {}
    for peer in args.peers:
        if peer in VENV_PEERS:
            pythons[peer] = ensure_venv(peer, venvs)
            versions[peer] = peer_versions(pythons[peer], peer)
    import importlib.metadata as md

    versions["mapo"] = md.version("mapo")

    server: dict[str, Any] = {}
    stop = None
    if args.fake:
        base_url, key, stop = start_fake()
        server = {"kind": "fake (tests/fake_openai.py)", "model": args.served_name, "dtype": None}
    elif args.base_url:
        base_url, key = args.base_url.rstrip("/"), args.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        server = {"kind": "external", "base_url": base_url, "model": args.served_name, "dtype": "as started"}
    else:
        print(f"[peers] starting vLLM for {args.model} in {args.dtype} (minutes on a CPU)", flush=True)
        base_url, key, stop = start_vllm(args.model, args.dtype, args.kvcache_gib)
    try:
        if stop is not None and not args.fake:
            server = {"kind": "vllm-cpu", "model": args.model, "dtype": args.dtype, "kvcache_gib": args.kvcache_gib}
            vllm = [d.version for d in md.distributions() if d.metadata["Name"] in ("vllm", "vllm-cpu")]
            versions["vllm"] = vllm[0] if vllm else "unknown"
        root = base_url.removesuffix("/v1")
        proxy = Proxy(root).start()
        spec, source = build_spec(args, proxy.base_url, key)
        phases: list[dict] = []
        recorded: list[dict] | None = None
        if not args.fake:  # the first phase after a server start runs slow (measured 0.88 vs 0.997): warm it up
            print("[peers] warm-up: the judge stage once, raw, unmeasured", flush=True)
            run_phase(args, "ceiling", "judge", spec, proxy, root, pythons, work)
        for rep in range(args.reps):
            order = [p for p in PEERS if p in args.peers]
            if rep % 2:  # interleave: alternate the order so drift in the machine's load hits everyone
                order.reverse()
            for stage in args.stages:
                ceiling: dict | None = None
                done: list[dict] = []
                todo = [p for p in order if stage == "chain" or p not in CHAIN_ONLY]
                if stage == "chain" and "ceiling" in todo and recorded is None and todo[0] == "ceiling":
                    todo.append(todo.pop(0))  # the chain's ceiling replays a chain: record one first
                for peer in todo:
                    if peer == "ceiling" and stage == "chain":
                        if recorded is None:
                            print("[peers] recording the chain's requests (mapo, unmeasured)", flush=True)
                            rec = run_phase(args, "mapo", stage, spec, proxy, root, pythons, work)
                            recorded = rec.get("_bodies")
                        spec["replay"] = [b["messages"] for b in recorded or []]
                    print(f"[peers] rep {rep + 1}/{args.reps} {stage}: {peer}", flush=True)
                    p = run_phase(args, peer, stage, spec, proxy, root, pythons, work)
                    p["rep"] = rep + 1
                    if stage == "chain" and peer != "ceiling" and "error" not in p and recorded is None:
                        recorded = p["_bodies"]
                    if peer == "ceiling" and "error" not in p:
                        ceiling = p
                    print(
                        "[peers]   "
                        + json.dumps({k: v for k, v in p.items() if k not in ("_bodies", "log", "finish_reasons")}),
                        flush=True,
                    )
                    done.append(p)
                raw = next((p for p in done if p["peer"] == "raw-chain" and "error" not in p), None)
                for p in done:
                    if raw and "error" not in p and raw["tok_per_s"]:
                        p["over_raw_chain"] = round(p["tok_per_s"] / raw["tok_per_s"], 3)
                    if ceiling and "error" not in p:
                        p["over_ceiling"] = (
                            round(p["tok_per_s"] / ceiling["tok_per_s"], 3) if ceiling["tok_per_s"] else None
                        )
                        theirs = {request_key(b) for b in ceiling["_bodies"]}
                        mine = [request_key(b) for b in p["_bodies"]]
                        p["same_requests_as_ceiling"] = (
                            round(sum(k in theirs for k in mine) / len(mine), 3) if mine else None
                        )
                phases += done
        for p in phases:
            p.pop("_bodies", None)
    finally:
        if stop:
            stop()
    res = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/peers.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_info(),
        "server": server,
        "versions": versions,
        "settings": {
            "pairs": args.pairs,
            "prompts": args.prompts,
            "reps": args.reps,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "temperature": 0.0,
            "pairs_source": source,
        },
        "peer_config": {
            "mapo": "LLMClient (cache off) + mapo.runs.runner.run_pool, width = concurrency; chain per item",
            "distilabel": "Pipeline: LoadDataFromDicts >> ChatGeneration(OpenAILLM) [>> Step >> ChatGeneration ...], "
            f"input_batch_size = batch_size = {args.distilabel_batch or args.concurrency}, use_cache=False",
            "curator": "curator.LLM(backend='openai', base_url), max_concurrent_requests = concurrency, "
            "max_requests_per_minute 1e9, max_tokens_per_minute 1e12, invalid_finish_reasons ['content_filter'], "
            "CURATOR_DISABLE_CACHE=1; chain = three successive LLM calls over the dataset",
            "ceiling": "openai.AsyncOpenAI, all requests gathered under a semaphore of width = concurrency",
            "raw-chain": "openai.AsyncOpenAI, every item's generate -> review -> revise in order, all items gathered "
            "under a semaphore of width = concurrency",
        },
        "phases": phases,
        "note": args.note,
    }
    res["summary"] = summarize(phases)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=64, help="judge requests (pairs, cycled from the pairs file)")
    ap.add_argument("--prompts", type=int, default=32, help="chains (prompts, cycled from builtin.jsonl)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions, interleaved")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight at most, for every peer")
    ap.add_argument(
        "--distilabel-batch",
        type=int,
        default=None,
        help="distilabel input_batch_size (default: --concurrency; smaller batches let its steps overlap)",
    )
    ap.add_argument("--max-tokens", type=int, default=192, help="max_tokens of every request")
    ap.add_argument(
        "--pairs-file",
        default=None,
        help="JSONL of question/response_a/response_b (default: prompts/**/*pairs*.jsonl, else made up)",
    )
    ap.add_argument("--model", default="smollm2-135m", help="model to serve (conf/model) when the bench starts vLLM")
    ap.add_argument("--served-name", default=None, help="model name in requests (default: --model)")
    ap.add_argument("--dtype", default="float32", help="vLLM --dtype of the server the bench starts")
    ap.add_argument(
        "--kvcache-gib",
        type=int,
        default=2,
        help="VLLM_CPU_KVCACHE_SPACE of that server (2 GiB in float32 = the 1 GiB bfloat16 default's tokens)",
    )
    ap.add_argument("--base-url", default=None, help="use this running server (.../v1) instead of starting one")
    ap.add_argument("--api-key", default=None, help="its API key (default: $OPENAI_API_KEY)")
    ap.add_argument("--note", default=None, help="a line for the report (e.g. what else the machine was doing)")
    ap.add_argument("--fake", action="store_true", help="run against tests/fake_openai.py (functional check)")
    ap.add_argument("--venvs", default=None, help="where the peers' venvs live (default: <cache>/bench-venvs)")
    ap.add_argument("--request-timeout", type=float, default=3600, help="per-request timeout for every peer")
    ap.add_argument("--phase-timeout", type=float, default=7200, help="seconds before a phase is killed")
    ap.add_argument("--out", default=None, help="results folder (default: bench/results; with --fake, the cache)")
    ap.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.served_name = args.served_name or args.model
    if args.out is None:  # a functional check never overwrites the measured results
        args.out = str(cache_root() / "bench-peers" / "fake" if args.fake else ROOT / "bench" / "results")
    return args


def main() -> None:
    if "--clientbound" in sys.argv[1:]:  # the client-bound mode: an instant server, the clients' own cost
        sys.argv.remove("--clientbound")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import clientbound

        clientbound.main()
        return
    args = parse_args()
    if args.worker:
        worker_main(args.worker, args.stage, args.spec, args.result)
        return
    res = orchestrate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "peers.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
