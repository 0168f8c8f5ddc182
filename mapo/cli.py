"""``mapo <command> [hydra overrides]``.

Hydra commands compose ``conf/<command>.yaml`` (multirun with ``-m`` works for each);
the others take plain arguments.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Callable

from mapo.config import REPO_ROOT, ConfigError, RunConfig, register_configs

log = logging.getLogger("mapo")

USAGE = """usage: mapo <command> [overrides...]

Hydra commands (key=value overrides, -m for sweeps):
  build       feedback loop -> best of N -> DPO/KTO dataset (the main job)
  evaluate    judge / jury / debate over a human-labelled set, with agreement (Cohen's kappa)
  winrate     feedback-loop configurations against single-model baselines

Other commands:
  agreement   kappa tables from stored judgements or the authors' outputs (mapo agreement --help)
  report      HTML + Markdown report of a run folder (mapo report RUN_DIR)
  reparse     re-run the parsers over stored raw texts (mapo reparse RUN_DIR)
  leaderboard judges x datasets from evaluate runs and sweeps (mapo leaderboard RUN_DIR...)
"""


def _hydra_commands() -> dict[str, Callable[[RunConfig], Any]]:
    from mapo import pipeline

    commands: dict[str, Callable[[RunConfig], Any]] = {"build": pipeline.build}
    try:
        from mapo import evaluate  # noqa: F401

        commands["evaluate"] = evaluate.evaluate
    except ImportError:
        pass
    try:
        from mapo import winrate  # noqa: F401

        commands["winrate"] = winrate.winrate
    except ImportError:
        pass
    return commands


def _plain_commands() -> dict[str, Callable[[list[str]], int]]:
    commands: dict[str, Callable[[list[str]], int]] = {}
    for name, module in (("agreement", "mapo.agreement_cli"), ("report", "mapo.report"), ("reparse", "mapo.reparse"),
                         ("leaderboard", "mapo.leaderboard")):
        try:
            mod = __import__(module, fromlist=["main"])
            commands[name] = mod.main
        except ImportError:
            pass
    return commands


def run_hydra(command: str, fn: Callable[[RunConfig], Any], argv: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    register_configs()

    def task(cfg: DictConfig) -> Any:
        from mapo.pipeline import RunStopped
        from mapo.store import RunLocked, StoreError

        try:
            run_cfg: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
            result = asyncio.run(fn(run_cfg))
        except (ConfigError, RunStopped, RunLocked, StoreError) as e:
            log.error("%s", e)
            sys.exit(2)
        if isinstance(result, dict):
            log.info("done: %s", {k: result[k] for k in ("output_dir", "items", "rows", "timings_s") if k in result})
        return result

    task.__name__ = command
    # an absolute path: Hydra resolves relative ones against the calling *module*, which breaks under `python -m`
    main = hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name=command)(task)
    sys.argv = [f"mapo {command}", *argv]
    main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    hydra_cmds = _hydra_commands()
    if command in hydra_cmds:
        run_hydra(command, hydra_cmds[command], rest)
        return
    plain = _plain_commands()
    if command in plain:
        sys.exit(plain[command](rest))
    print(f"mapo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)
