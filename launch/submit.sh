#!/usr/bin/env bash
# Launch zobench from pinned code: a clean git worktree at one commit, so every job of a sweep
# (and every requeue of a job) runs exactly that commit, whatever happens to your checkout
# meanwhile. The commit is recorded in each run's summary.json (git_sha, never "-dirty" here) and
# in <worktree>/launches.log.
#
#   launch/submit.sh [--commit REV] [--force] [--dry-run] -- <python -m zobench arguments>
#   launch/submit.sh -- -m hydra/launcher=gpu1_small hydra.launcher.partition=gpu \
#       hydra.sweep.dir=$PWD/sweeps/mezo_sst2 model=opt-1.3b task=sst2 optimizer.lr=1e-6,1e-7 seed=0,1,2
#
#   --commit REV   commit to run (default HEAD)
#   --force        launch HEAD even though the checkout has uncommitted changes (they are NOT used)
#   --dry-run      prepare the worktree and print the command without running it
# Environment: PYTHON (default: python), ZOBENCH_WORKTREES (default: <repo>/.launch/).
# zobench runs in the current directory (relative paths in the arguments mean what you expect);
# only its code and configs come from the worktree (PYTHONPATH=<worktree>/src).
set -euo pipefail

die() { echo "launch/submit.sh: error: $*" >&2; exit 2; }

rev=HEAD force=0 dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --commit) [[ $# -ge 2 ]] || die "--commit needs a revision"; rev=$2; shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) die "unknown option $1; usage: launch/submit.sh [--commit REV] [--force] [--dry-run] -- <zobench args>" ;;
  esac
done

repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
sha=$(git -C "$repo" rev-parse --verify --quiet "${rev}^{commit}") || die "--commit $rev: no such commit in $repo"
if [[ $rev == HEAD && $force == 0 && -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
  die "$repo has uncommitted changes, which a launch would not include; commit them, or pass --force to launch HEAD ($sha) without them"
fi

worktrees=${ZOBENCH_WORKTREES:-$repo/.launch}
tree=$worktrees/${sha:0:12}
if [[ -d $tree ]]; then
  [[ $(git -C "$tree" rev-parse HEAD) == "$sha" ]] || die "$tree exists but is not at $sha; remove it (git worktree remove $tree)"
  [[ -z $(git -C "$tree" status --porcelain --untracked-files=no) ]] || die "$tree has been modified; remove it (git worktree remove --force $tree)"
else
  mkdir -p "$worktrees"
  git -C "$repo" worktree add --detach --quiet "$tree" "$sha"
fi

python=${PYTHON:-python}
cmd=("$python" -m zobench "$@")
printf '%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$sha" "$PWD" "${cmd[*]}" >> "$tree/launches.log"
echo "zobench at $sha ($tree): ${cmd[*]}" >&2
if [[ $dry == 1 ]]; then
  exit 0
fi
PYTHONPATH="$tree/src${PYTHONPATH:+:$PYTHONPATH}" exec "${cmd[@]}"
