"""``mapo <command> [arguments]``: one registry of commands.

Hydra commands compose ``conf/<command>.yaml`` and take ``key=value`` overrides (``-m`` for
sweeps); plain commands take ordinary arguments. Each command names the module that
implements it, imported only when that command runs, so ``mapo --help`` stays fast.

A Hydra command ends with one line (no traceback; ``hydra.verbose=mapo`` logs it) and an
exit code: 0 complete; 2 a config error (also one Hydra finds while composing: an unknown
group choice or key, a value of the wrong type or choice, a run folder outside runs/ or one that cannot
be created), a locked folder, a damaged record file or a stopped
run (endpoint, credentials, budget, disk full, a config error found mid-run); 130 interrupted (Ctrl-C, or SIGTERM, which
SLURM's scancel sends: both stop cleanly, everything finished saved); 1 failed (internal error).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import logging
import os
import signal
import sys
import traceback
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
        return getattr(importlib.import_module(module), function)


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
        Command("train", "mapo.runs.train:train", "DPO/KTO (TRL) on a built dataset -> servable model", hydra=True),
        Command("agreement", "mapo.cli.agreement:main", "kappa tables from stored judgements or the authors' outputs"),
        Command("report", "mapo.report.render:main", "HTML + Markdown report of a run folder (mapo report RUN_DIR)"),
        Command("reparse", "mapo.runs.reparse:main", "re-run the parsers over stored raw texts (mapo reparse RUN_DIR)"),
        Command("view", "mapo.view.server:main", "every item of runs in the browser, on 127.0.0.1 (mapo view RUN ...)"),
        Command("leaderboard", "mapo.report.leaderboard:main", "judges x datasets from evaluate runs and sweeps"),
        Command(
            "serve", "mapo.serving.__main__:main", "vLLM servers for conf/model/ (mapo serve up|down|status|prepare)"
        ),
        Command("wait", "mapo.serving.wait:main", "block until the named models' servers answer (mapo wait --model M)"),
        Command(
            "merge", "mapo.runs.shard:merge_main", "join a job array's shard runs, rebuild DPO/KTO (DIRS --out DIR)"
        ),
        Command("summary", "mapo.runs.shard:summary_main", "one table of every run's manifest in a sweep (SWEEP_DIR)"),
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


def _run_hydra(command: str, fn: Callable[..., Any], argv: list[str]) -> None:
    """Compose ``conf/<command>.yaml`` with the overrides and run ``fn`` on the typed config."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mapo.core.config import ConfigError, RunConfig, register_configs, resource_dir
    from mapo.core.store import RunLocked, StoreError, WriteFailed
    from mapo.runs.runner import RunFailed, RunInterrupted, RunStopped

    register_configs()

    def task(cfg: DictConfig) -> Any:
        _guard_log_files(command)
        try:
            run_cfg: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
            result = asyncio.run(fn(run_cfg))
        except (ConfigError, RunStopped, RunLocked, StoreError, WriteFailed) as e:
            log.error("%s", e)
            sys.exit(2)
        except (RunInterrupted, KeyboardInterrupt, asyncio.CancelledError) as e:
            log.error("%s", e if isinstance(e, RunInterrupted) else "interrupted before any work")
            sys.exit(130)
        except RunFailed as e:
            log.error("%s", e)
            log.debug("traceback", exc_info=True)
            sys.exit(1)
        except Exception as e:  # a bug outside the run skeleton: still one line at the default level
            log.error(
                "mapo %s: internal error %s: %s (hydra.verbose=mapo shows the traceback)", command, type(e).__name__, e
            )
            log.debug("traceback", exc_info=True)
            sys.exit(1)
        if isinstance(result, dict):
            log.info("done: %s", {k: result[k] for k in ("output_dir", "items", "rows", "timings_s") if k in result})
            items: dict[str, Any] = result["items"] if isinstance(result.get("items"), dict) else {}
            failed, incomplete = items.get("failed"), items.get("incomplete")
            if failed or incomplete:  # the last line says so: complete, but not every item made it
                what = [f"{failed} failed item(s)"] if failed else []
                what += [f"{incomplete} verdict(s) missing a member's (a failed juror)"] if incomplete else []
                log.warning(
                    "mapo %s: complete with %s; their reasons are in the records of %s; "
                    "rerun the same command to do them again (client.max_failure_rate=F makes too many a stop)",
                    command,
                    " and ".join(what),
                    result.get("output_dir"),
                )
        return result

    task.__name__ = command
    # an absolute path: Hydra resolves relative ones against the calling *module*, which breaks under `python -m`
    main = hydra.main(version_base="1.3", config_path=str(resource_dir("conf")), config_name=command)(task)
    sys.argv = [f"mapo {command}", *argv]
    before = os.environ.get("HYDRA_FULL_ERROR")
    full_error = before == "1"  # as Hydra reads it
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it refuses (instead of exit 1) so it is ours to report
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:  # composing: a bad choice, key, value or run folder
        if full_error:
            traceback.print_exc()
        print(f"mapo {command}: config error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # Hydra's own start: creating the run folder, writing .hydra/ and the log into it
        if full_error:
            traceback.print_exc()
        print(f"mapo {command}: {_run_folder_error(e)}", file=sys.stderr)
        sys.exit(2)
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _guard_log_files(command: str) -> None:
    """Hydra's log file (``app.log`` in the run folder) that cannot be written (a full disk): said once, in
    one line naming the file, and no longer written; the run goes on (its log still reaches the terminal).
    Without this, logging prints a ``--- Logging error ---`` traceback for every line."""
    for logger in (logging.getLogger(), log):
        files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
        for handler in files:
            handler.handleError = _stop_writing(command, logger, handler)  # type: ignore[method-assign]
        # the file first: its notice comes before the line it failed on, so a run's ending stays the last line
        logger.handlers = [*files, *(h for h in logger.handlers if h not in files)]


def _stop_writing(command: str, logger: logging.Logger, handler: logging.FileHandler) -> Callable[..., None]:
    def handle_error(record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        # a new list, not removeHandler: logging is iterating over the old one (its next handler must still run)
        logger.handlers = [h for h in logger.handlers if h is not handler]
        with contextlib.suppress(Exception):  # closing flushes what could not be written: it fails again
            handler.close()
        why = getattr(error, "strerror", None) or error
        print(
            f"mapo {command}: cannot write the log file {handler.baseFilename} (in hydra.run.dir): {why}; "
            "it is no longer written (the terminal still gets every line)",
            file=sys.stderr,
        )

    return handle_error


def _failed_path(e: OSError) -> str | None:
    """The file an OS error was about: its ``filename``, or the name of the file object being written where it
    was raised (Hydra writes ``.hydra/config.yaml`` with ``file.write``, whose error names no file)."""
    if e.filename:
        return str(e.filename)
    tb = e.__traceback__
    names: list[str] = []
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                names.append(value.name)  # type: ignore[attr-defined]
        tb = tb.tb_next
    return names[-1] if names else None  # the innermost


def _run_folder_error(e: OSError) -> str:
    """An OS error of Hydra's start-up in words naming the setting: the run folder (hydra.run.dir)."""
    import errno

    what = _failed_path(e) or "the run folder"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"disk full: cannot write {what} in the run folder (hydra.run.dir): {e.strerror}; free space and rerun"
    return f"cannot create or write the run folder (hydra.run.dir): {what}: {e.strerror or e}"


def _one_line(e: BaseException) -> str:
    """An exception and its cause (Hydra wraps OmegaConf's) as one line: ``Error merging override
    x=1: Key 'x' is not in struct; full_key: x``. A list after a line ending in ``:`` is joined by commas."""
    parts = [str(e)] + ([str(e.__cause__)] if e.__cause__ is not None and str(e.__cause__) not in str(e) else [])
    out = ""
    for part in parts:
        lines = [x.strip() for x in part.splitlines() if x.strip()]
        text = ""
        for i, line in enumerate(lines):
            if i == 0:
                text = line
            elif lines[i - 1].endswith(":") or text.endswith(","):
                text += " " + line + ("," if i + 1 < len(lines) else "")
            else:
                text += "; " + line
        out = f"{out}: {text}" if out else text
    return out.rstrip(",")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


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
        # SIGTERM (SLURM's scancel, `kill`) stops a run as Ctrl-C does; the runner catches both
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            _run_hydra(name, command.load(), rest)
        except KeyboardInterrupt:
            print(f"mapo {name}: interrupted before any work", file=sys.stderr)
            sys.exit(130)
        return
    sys.exit(command.load()(rest))
