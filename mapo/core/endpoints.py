"""The endpoint registry: which OpenAI-compatible servers are up, where, and with which key.

One JSON file, shared by every process that starts or calls a server (on a cluster it lives
on the shared filesystem). ``python -m serve up`` registers each vLLM server it starts and
``down`` unregisters it; ``mapo/llm/client.py`` calls :func:`lookup` for models whose config has
``endpoint: <name>`` and balances over the replicas it gets back.

The file is ``$MAPO_ENDPOINTS``, else ``${MAPO_CACHE:-~/.cache/mapo}/endpoints.json``. Every
change is a read-modify-write under an ``fcntl`` lock on a sibling ``.lock`` file, written to a
temporary file and moved into place with ``os.replace``, so readers never see half a file.
The file is mode 0600. API keys are never stored in it: each entry names a 0600 key file.

It lives in ``core`` because two layers share it: ``serving`` writes it and ``llm`` reads it, and
neither imports the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mapo.core.config import ConfigError

__all__ = [
    "Endpoint",
    "EndpointNotFound",
    "RegistryCorrupt",
    "lookup",
    "prune",
    "read_all",
    "register",
    "registry_path",
    "unregister",
]

log = logging.getLogger(__name__)

_warned_key_files: set[str] = set()


@dataclass
class Endpoint:
    """One running server for one model (a data-parallel replica is one more Endpoint)."""

    name: str
    """Model name, the key in ``conf/model/`` (``smollm2-135m``)."""
    base_url: str
    """OpenAI base URL, ending in ``/v1``."""
    served_name: str
    """The model name the server answers to (``--served-model-name``)."""
    api_key_file: str | None
    """A 0600 file holding the server's API key, or None for a server without one."""
    host: str
    """Hostname of the machine running the server; :func:`prune` checks pids only there."""
    port: int
    pid: int | None
    """Server pid (its process-group leader), or None when not managed by ``serve``."""
    job_id: str | None
    """SLURM job id of the server, if any."""
    started_at: float
    """Unix time the server became ready."""

    def api_key(self) -> str | None:
        """The server's API key, read from :attr:`api_key_file` (OSError if it cannot be read; a
        warning, once per file, if other users may read it)."""
        if self.api_key_file is None:
            return None
        path = Path(self.api_key_file)
        with path.open() as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            key = handle.read().strip()
        if mode & 0o077 and self.api_key_file not in _warned_key_files:
            _warned_key_files.add(self.api_key_file)
            log.warning(
                "API key file %s of endpoint %s is readable by other users (mode %04o); chmod 600 it",
                path,
                self.name,
                mode,
            )
        return key


class EndpointNotFound(ConfigError, LookupError):
    """No server is registered for a model (a start failure: the message names the model and file)."""


class RegistryCorrupt(ConfigError):
    """The registry file is not a registry; the message names the file."""


def registry_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAPO_ENDPOINTS``, else ``${MAPO_CACHE:-~/.cache/mapo}/endpoints.json``."""
    if path is not None:
        return Path(path).expanduser()
    if env := os.environ.get("MAPO_ENDPOINTS"):
        return Path(env).expanduser()
    cache = os.environ.get("MAPO_CACHE") or Path.home() / ".cache" / "mapo"
    return Path(cache).expanduser() / "endpoints.json"


def register(ep: Endpoint, path: str | os.PathLike | None = None) -> None:
    """Add ``ep``, replacing any entry with the same ``base_url``."""
    with _transaction(path) as entries:
        entries[:] = [e for e in entries if e.base_url != ep.base_url] + [ep]


def unregister(base_url: str, path: str | os.PathLike | None = None) -> None:
    """Drop the entry for ``base_url``; a missing entry is not an error."""
    with _transaction(path) as entries:
        entries[:] = [e for e in entries if e.base_url != base_url]


def read_all(path: str | os.PathLike | None = None) -> list[Endpoint]:
    """Every registered endpoint, in registration order."""
    file = registry_path(path)
    with _lock(file, shared=True):
        return _read(file)


def lookup(name: str, path: str | os.PathLike | None = None) -> list[Endpoint]:
    """All replicas registered for model ``name``.

    Raises:
        EndpointNotFound: none is registered; the message names the model, the registry file
            and the command that starts one.
    """
    file = registry_path(path)
    everything = read_all(file)
    found = [e for e in everything if e.name == name]
    if not found:
        known = sorted({e.name for e in everything})
        raise EndpointNotFound(
            f"no endpoint registered for model {name!r} in {file} "
            f"(registered: {', '.join(known) if known else 'none'}); "
            f"start one with `python -m serve up --model {name}`"
        )
    return found


def prune(path: str | os.PathLike | None = None) -> int:
    """Drop entries of this host whose pid is dead; return how many were dropped.

    Entries of other hosts, and entries without a pid, are kept: their liveness cannot be
    checked from here.
    """
    here = socket.gethostname()
    with _transaction(path) as entries:
        keep = [e for e in entries if not (e.host == here and e.pid is not None and not _alive(e.pid))]
        dropped = len(entries) - len(keep)
        entries[:] = keep
    return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def _lock(file: Path, *, shared: bool = False) -> Iterator[None]:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file.with_name(file.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _transaction(path: str | os.PathLike | None) -> Iterator[list[Endpoint]]:
    file = registry_path(path)
    with _lock(file):
        entries = _read(file)
        yield entries
        _write(file, entries)


def _read(file: Path) -> list[Endpoint]:
    try:
        text = file.read_text()
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text) if text.strip() else {"endpoints": []}
        return [Endpoint(**item) for item in data["endpoints"]]
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise RegistryCorrupt(
            f"endpoint registry {file} is corrupt ({problem}); fix or delete it, then restart the servers "
            f"(python -m serve up)"
        ) from None


def _write(file: Path, entries: list[Endpoint]) -> None:
    payload = json.dumps({"endpoints": [dataclasses.asdict(e) for e in entries]}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
