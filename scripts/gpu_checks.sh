#!/usr/bin/env bash
# Everything that needs a GPU, in one run: tests/test_cuda.py (skipped where no GPU is), then the
# rest of the test suite, then the train-step and walk-forward
# benchmarks on the GPU, with the same walk-forward on this host's CPU for a same-machine ratio,
# then the panel benchmark at N = 1,024 and the grouped-members benchmark (issues 18, 19).
#   bash scripts/gpu_checks.sh [OUTDIR [STEP...]]
# Each step has its own time limit, so one slow step cannot eat the others' time. The limits add
# up to about 13 minutes, more than one 10-minute device command: name steps to run a subset,
# e.g. `bash scripts/gpu_checks.sh out pytest_cuda bench_panel_cuda bench_batched_cuda`.
set -u
out=${1:-gpu_checks_out}
shift $(($# > 0 ? 1 : 0))
only=" $* "
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
    echo "=== $name"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "exit $? after ${SECONDS}s total" | tee -a "$out/$name.txt"
    tail -n 40 "$out/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch, pandas, numpy; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(), 'pandas', pandas.__version__, 'numpy', numpy.__version__)"
"$py" -c "import torch; print('CPU threads', torch.get_num_threads())"
step pytest_cuda 120 "$py" -m pytest -v -p no:cacheprovider -rs tests/test_cuda.py
step pytest 180 "$py" -m pytest -q -p no:cacheprovider -rs tests --ignore tests/test_cuda.py
step bench_train_cuda 80 "$py" scripts/bench_train.py --device cuda --step-rounds 5
step bench_walkforward_cuda 90 "$py" scripts/bench_walkforward.py --device cuda --repeats 3
step bench_walkforward_cpu 90 "$py" scripts/bench_walkforward.py --device cpu --repeats 3 \
    --threads 2
# issue 18: validation's share of a panel epoch at N = 1,024 (the seed TCN both ways, multiscale)
step bench_panel_cuda 150 "$py" scripts/bench_panel.py --device cuda --tickers 1024
# issue 19: 10 folds' worth of wf_msft TCNs one after another against one grouped model
step bench_batched_cuda 60 "$py" scripts/bench_batched.py --device cuda --config wf_msft \
    --members 10 --repeats 10
