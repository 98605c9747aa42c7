#!/usr/bin/env bash
# Run every experiment YAML of a folder, one after another, then print a table of the results.
#
#   ./run_experiments.sh [DIR]                      # DIR defaults to experiments/
#
# Each DIR/*.yaml (in name order) runs as
#   torchrun --standalone --nproc_per_node=N train.py --yaml_path DIR/NAME.yaml --log_name NAME
# with N = the number of GPUs that `nvidia-smi -L` lists, or, without GPUs, $NPROC_PER_NODE (default 1) CPU
# processes. A failed run does not stop the batch. The table (name, status, final val loss, time to target,
# tokens/s) is read from each run's JSON summary `{log_dir}/NAME.json` (log_dir as the YAML resolves it); the
# console output of each run goes to `$OUT_DIR/NAME.out`. Exit status: 0 if every run finished with status ok,
# 1 otherwise (2: no such directory, or no YAML in it).
#
# Environment (all optional):
#   NPROC_PER_NODE   processes per node when there is no GPU (default 1)
#   OUT_DIR          where the console outputs go (default logs/run_experiments)
#   DOCKER_IMAGE     run each job inside this image (built from ./Dockerfile) with `docker run --gpus all`;
#                    HF_TOKEN / WANDB_API_KEY are forwarded by name (`-e VAR`), never written on a command line
#   PYTHON           the Python interpreter (default: python)
# No prompts, no sudo. Secrets come from the environment only (HF_TOKEN, WANDB_API_KEY).
set -uo pipefail
cd "$(dirname "$0")"

DIR="${1:-experiments}"
PYTHON="${PYTHON:-python}"
OUT_DIR="${OUT_DIR:-logs/run_experiments}"
if [[ ! -d "$DIR" ]]; then
    echo "run_experiments.sh: no such directory: $DIR" >&2
    exit 2
fi
shopt -s nullglob
YAMLS=("$DIR"/*.yaml)
if (( ${#YAMLS[@]} == 0 )); then
    echo "run_experiments.sh: no *.yaml files in $DIR" >&2
    exit 2
fi

if command -v nvidia-smi >/dev/null 2>&1 && (( $(nvidia-smi -L 2>/dev/null | grep -c '^GPU') > 0 )); then
    NPROC=$(nvidia-smi -L | grep -c '^GPU')
else
    NPROC="${NPROC_PER_NODE:-1}"
fi
if command -v torchrun >/dev/null 2>&1; then
    LAUNCH=(torchrun)
else
    LAUNCH=("$PYTHON" -m torch.distributed.run)   # torchrun is not always on PATH (e.g. some venvs)
fi
if [[ -n "${DOCKER_IMAGE:-}" ]]; then
    PREFIX=(docker run --rm --gpus all --ipc=host -e HF_TOKEN -e WANDB_API_KEY
            -v "$PWD":/workspace -w /workspace "$DOCKER_IMAGE")
else
    PREFIX=()
fi

# The log_dir a YAML resolves to (its own value or the default), via train.py's own parser; empty when the YAML
# does not parse (that run then fails with train.py's message in its .out file, and has no summary).
log_dir_of() {
    "$PYTHON" -c 'import sys, train; print(train.parse_config(["--yaml_path", sys.argv[1]])[0].run.log_dir)' "$1" \
        2>/dev/null
}

mkdir -p "$OUT_DIR"
NAMES=()
EXITS=()
SUMMARIES=()
for yaml in "${YAMLS[@]}"; do
    name=$(basename "$yaml" .yaml)
    log_dir=$(log_dir_of "$yaml")
    summary="${log_dir:+$log_dir/$name.json}"
    # A summary left by an older run of the same name must not be reported as this one.
    if [[ -n "$summary" ]]; then rm -f "$summary"; fi
    echo "=== $name: ${PREFIX[*]} ${LAUNCH[*]} --standalone --nproc_per_node=$NPROC train.py --yaml_path $yaml --log_name $name"
    "${PREFIX[@]}" "${LAUNCH[@]}" --standalone --nproc_per_node="$NPROC" train.py --yaml_path "$yaml" \
        --log_name "$name" 2>&1 | tee "$OUT_DIR/$name.out"
    code=${PIPESTATUS[0]}
    echo "=== $name: exit code $code"
    NAMES+=("$name")
    EXITS+=("$code")
    SUMMARIES+=("${summary:--}")
done

# The table, from the JSON summaries only (never from the text logs).
"$PYTHON" - "${#NAMES[@]}" "${NAMES[@]}" "${EXITS[@]}" "${SUMMARIES[@]}" <<'EOF'
import json
import sys
from pathlib import Path

n = int(sys.argv[1])
names, exits, summaries = sys.argv[2:2 + n], sys.argv[2 + n:2 + 2 * n], sys.argv[2 + 2 * n:2 + 3 * n]
rows, failed = [], 0
for name, code, path in zip(names, exits, summaries):
    s = json.loads(Path(path).read_text()) if path != "-" and Path(path).is_file() else {}
    status = s.get("status", "failed")
    if code != "0" and status in ("ok", "running"):
        status = "failed"
    if code != "0" or status != "ok":
        failed += 1
        status += f" (exit {code})"
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    rows.append((name, status, fmt(s.get("final_val_loss"), ".4f"), fmt(s.get("time_to_target_s"), ".1f"),
                 fmt(s.get("tokens_per_s"), ",.0f")))
header = ("name", "status", "final val loss", "time to target (s)", "tokens/s")
widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
for row in [header, tuple("-" * w for w in widths)] + rows:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
print(f"{len(rows) - failed} of {len(rows)} runs ok")
sys.exit(1 if failed else 0)
EOF
