"""``mapo wait --model NAME[,NAME] [--timeout S] [--pid PID]``: block until every named
model has a registered endpoint that answers, e.g. a pipeline job waiting for a server job
(slurm/pipeline.sbatch). Exit 0 when all answer; 1 on timeout, or as soon as process PID (the
``serve up`` being waited for) has ended, naming the models missing.

An entry counts when ``GET <base_url>/models`` with its API key lists its served name, so a
stale entry of a server that died without unregistering is not mistaken for a live one.
The key is read from its 0600 file and sent in a header; it is never printed.
``python -m mapo.serving.wait`` is the same command (the spelling of older job scripts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import urllib.error
import urllib.request

from mapo.core import endpoints

__all__ = ["answers", "wait_for", "main"]

log = logging.getLogger("serve.wait")


def answers(ep: endpoints.Endpoint, timeout: float = 5.0) -> bool:
    """The server behind ``ep`` is up and serves ``ep.served_name``."""
    request = urllib.request.Request(ep.base_url.rstrip("/") + "/models")
    try:
        key = ep.api_key()
    except OSError:
        return False
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return f'"{ep.served_name}"' in response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return False


def _gone(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def wait_for(
    names: list[str], *, timeout: float, registry: str | None = None, poll_s: float = 2.0, pid: int | None = None
) -> list[str]:
    """Wait until each model has an answering endpoint; return the models still missing at the
    timeout, or when process ``pid`` has ended."""
    deadline = time.monotonic() + timeout
    missing = list(dict.fromkeys(names))
    while True:
        still = []
        for name in missing:
            try:
                live = [ep for ep in endpoints.lookup(name, registry) if answers(ep)]
            except endpoints.EndpointNotFound:
                live = []
            if live:
                log.info("%s is up at %s", name, ", ".join(ep.base_url for ep in live))
            else:
                still.append(name)
        missing = still
        if not missing or time.monotonic() >= deadline:
            return missing
        if _gone(pid):
            log.error("process %d ended before the servers were up", pid)
            return missing
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def main(argv: list[str] | None = None) -> int:
    """``mapo wait``: 0 once every named server answers, 1 on timeout."""
    parser = argparse.ArgumentParser(prog="mapo wait", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME[,NAME]",
        help="model(s) of conf/model/ to wait for (repeatable, or comma-separated; "
        "default: the embedded ones, as `serve up`)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before giving up (default 3600)")
    parser.add_argument("--pid", type=int, help="give up as soon as this process (the `serve up`) has ended")
    parser.add_argument(
        "--registry", metavar="PATH", help="endpoint registry (default $MAPO_ENDPOINTS or $MAPO_CACHE/endpoints.json)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve.wait: %(message)s", datefmt="%H:%M:%S")
    if args.model:
        names = [n.strip() for arg in args.model for n in arg.split(",") if n.strip()]
    else:
        from mapo.serving.launch import EMBEDDED

        names = list(EMBEDDED)
    log.info(
        "waiting up to %.0f s for %s in %s", args.timeout, ", ".join(names), endpoints.registry_path(args.registry)
    )
    missing = wait_for(names, timeout=args.timeout, registry=args.registry, pid=args.pid)
    if missing:
        log.error(
            "no answering endpoint for %s after %.0f s (is its server job running? python -m serve status)",
            ", ".join(missing),
            args.timeout,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
