"""``mapo <command> [arguments]``: one registry of commands.

Hydra commands compose ``conf/<command>.yaml`` and take ``key=value`` overrides (``-m`` for
sweeps); plain commands take ordinary arguments. Each command names the module that
implements it, imported only when that command runs, so ``mapo --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mapo")


@dataclass(frozen=True)
class Command:
    """A CLI command: ``target`` is ``module:function``."""

    name: str
    target: str
    summary: str
    hydra: bool = False
    """True: ``function(RunConfig)`` (async) composed by Hydra; False: ``function(argv) -> exit code``."""

    def load(self) -> Callable[..., Any]:
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "build", "mapo.runs.build:build", "feedback loop -> best of N -> DPO/KTO dataset (the main job)", hydra=True
        ),
        Command(
            "evaluate",
            "mapo.runs.evaluate:evaluate",
            "judge / jury / debate over a human-labelled set, with agreement",
            hydra=True,
        ),
        Command(
            "winrate",
            "mapo.runs.winrate:winrate",
            "feedback-loop configurations against single-model baselines",
            hydra=True,
        ),
        Command("train", "mapo.training.train:train", "DPO/KTO (TRL) on a built dataset -> servable model", hydra=True),
        Command("agreement", "mapo.cli.agreement:main", "kappa tables from stored judgements or the authors' outputs"),
        Command("report", "mapo.report.render:main", "HTML + Markdown report of a run folder (mapo report RUN_DIR)"),
        Command("reparse", "mapo.runs.reparse:main", "re-run the parsers over stored raw texts (mapo reparse RUN_DIR)"),
        Command("leaderboard", "mapo.report.leaderboard:main", "judges x datasets from evaluate runs and sweeps"),
        Command(
            "serve", "mapo.serving.__main__:main", "vLLM servers for conf/model/ (mapo serve up|down|status|prepare)"
        ),
    ]
}


def usage() -> str:
    hydra_lines = [f"  {c.name:<12}{c.summary}" for c in COMMANDS.values() if c.hydra]
    plain_lines = [f"  {c.name:<12}{c.summary}" for c in COMMANDS.values() if not c.hydra]
    return "\n".join(
        [
            "usage: mapo <command> [arguments...]",
            "",
            "Hydra commands (key=value overrides, -m for sweeps):",
            *hydra_lines,
            "",
            "Other commands (mapo <command> --help):",
            *plain_lines,
            "",
        ]
    )


def run_hydra(command: str, fn: Callable[..., Any], argv: list[str]) -> None:
    """Compose ``conf/<command>.yaml`` with the overrides and run ``fn`` on the typed config."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from mapo.core.config import ConfigError, RunConfig, register_configs, resource_dir
    from mapo.runs.runner import RunStopped
    from mapo.runs.store import RunLocked, StoreError

    register_configs()

    def task(cfg: DictConfig) -> Any:
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
    main = hydra.main(version_base="1.3", config_path=str(resource_dir("conf")), config_name=command)(task)
    sys.argv = [f"mapo {command}", *argv]
    main()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mapo`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        from mapo import __version__

        print(f"mapo {__version__}")
        return
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"mapo: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if command.hydra:
        run_hydra(name, command.load(), rest)
        return
    sys.exit(command.load()(rest))
