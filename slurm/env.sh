# Sourced by every mapo sbatch script: environment only, no model names, no user paths.
#
# The job runs in sbatch's working folder (where you submitted, or --chdir): runs/ and
# multirun/ land there, as with an interactive `mapo build`.
#
#   MAPO_HOME         the mapo checkout (default: the one holding this file)
#   MAPO_VENV         virtualenv to activate when none is active (default: $MAPO_HOME/.venv)
#   MAPO_CACHE        response cache + endpoint registry, on the shared filesystem (mapo's default: ~/.cache/mapo)
#   MAPO_ENDPOINTS    endpoint registry file (default: $MAPO_CACHE/endpoints.json)
#   MAPO_KILL_WAIT    seconds between TERM and KILL of the command's process group (default 20); `serve up
#                     --foreground` gives its vLLM servers 5 s less, so it has killed them before its own KILL
#
# run_one CMD...: runs CMD in its own process group and waits. When the job is cancelled or
# hits its time limit (SLURM sends TERM), the whole group gets TERM, then KILL: no orphan.
set -euo pipefail
MAPO_HOME=${MAPO_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export MAPO_HOME
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "${MAPO_VENV:-$MAPO_HOME/.venv}/bin/activate" ]; then
  # shellcheck disable=SC1090,SC1091
  source "${MAPO_VENV:-$MAPO_HOME/.venv}/bin/activate"
fi
export PYTHONUNBUFFERED=1
export HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-1}

_mapo_stop_group() {  # _mapo_stop_group PGID: TERM the group, KILL what is left after MAPO_KILL_WAIT s
  local pgid=$1 i
  kill -TERM -- "-$pgid" 2>/dev/null || return 0
  for ((i = 0; i < ${MAPO_KILL_WAIT:-20} * 10; i++)); do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
}

run_one() {
  # setsid from a background child (not a group leader) execs in place: $! is the command's pid = its pgid
  setsid "$@" &
  local pid=$! rc=0
  trap '_mapo_stop_group '"$pid"'; wait '"$pid"' 2>/dev/null; exit 143' TERM INT HUP
  wait "$pid" || rc=$?
  trap - TERM INT HUP
  _mapo_stop_group "$pid"  # stragglers the command left behind
  return "$rc"
}
