#!/usr/bin/env bash
# Everything that needs a GPU, in one run, most wanted first: tests/test_cuda.py (skipped where
# no GPU is), the universe benchmark on the GPU (issue 33), the grouped-members benchmarks (a
# step, and tsconv's trainer with `train.grouped_members`), the panel
# benchmarks (issues 19, 18), the rest of the test suite, then the train-step and walk-forward
# benchmarks on the GPU, with the same walk-forward on this host's CPU for a same-machine ratio.
#   bash scripts/gpu_checks.sh [OUTDIR [STEP...]]
# Each step has its own time limit, so one slow step cannot eat the others' time. The limits add
# up to about 20 minutes, more than one 10-minute device command: name steps to run a subset,
# e.g. `bash scripts/gpu_checks.sh out pytest_cuda bench_trainer_cuda bench_universe_cuda`, or
# set GPU_CHECKS_BUDGET=SECONDS to cut each step's limit to what is left of that budget.
# `bench_universe_whole_cuda` (N = 500 x 40 refits, measured whole) runs only when named, in a
# device command of its own: `bash scripts/gpu_checks.sh out bench_universe_whole_cuda`.
set -u
out=${1:-gpu_checks_out}
shift $(($# > 0 ? 1 : 0))
only=" $* "
budget=${GPU_CHECKS_BUDGET:-0}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
    if ((budget > 0)); then  # GPU_CHECKS_BUDGET: seconds for the whole script; steps share it
        ((limit > budget - SECONDS - 5)) && limit=$((budget - SECONDS - 5))
        ((limit < 20)) && { echo "=== $name skipped: the budget is spent"; return 0; }
    fi
    echo "=== $name"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "exit $? after ${SECONDS}s total" | tee -a "$out/$name.txt"
    tail -n 40 "$out/$name.txt"
}
named_step() {  # as step, but only when named: a step that needs a device command of its own
    [[ "$only" == *" $1 "* ]] || { echo "=== $1 runs only when named"; return 0; }
    step "$@"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch, pandas, numpy; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(), 'pandas', pandas.__version__, 'numpy', numpy.__version__)"
"$py" -c "import torch; print('CPU threads', torch.get_num_threads())"
step pytest_cuda 120 "$py" -m pytest -v -p no:cacheprovider -rs tests/test_cuda.py
# issue 33: the universe walk-forward on the GPU at N = 32 and 128 (4 refits each), with the
# cost model's projection to N = 500 and 40 refits
step bench_universe_cuda 240 "$py" scripts/bench_universe.py --tickers 32 128 --refits 4 \
    --project 500 --project-refits 40 --set train.device=cuda
# issue 19: 10 folds' worth of wf_msft TCNs one after another against one grouped model
step bench_batched_cuda 60 "$py" scripts/bench_batched.py --device cuda --config wf_msft \
    --members 10 --repeats 10
# issue 33: N = 500 x 40 refits measured whole (goal: under 10 minutes on one H200 with R^2
# at the oracle's level), folds on 8 processes sharing the GPU, the pooled ridge baseline;
# it needs most of one device command: it runs only when named, alone
named_step bench_universe_whole_cuda 580 "$py" scripts/bench_universe.py --tickers --whole 500 \
    --refits 40 --workers 8 --set train.device=cuda --set backtest.ridge_baseline=pooled
# issue 33: the same through tsconv's trainer, a fold's 8 wf_msft members one after another
# against together (train.grouped_members)
step bench_trainer_cuda 150 "$py" scripts/bench_batched.py --trainer --device cuda --config wf_msft \
    --members 8 --repeats 2
# issue 18: validation's share of a panel epoch at N = 1,024 (the seed TCN both ways, multiscale)
step bench_panel_cuda 150 "$py" scripts/bench_panel.py --device cuda --tickers 1024
# the rest of the suite on 8 workers (pytest-xdist), `train.device: auto` meaning CUDA there
step pytest 240 "$py" -m pytest -v --tb=line -n 8 --dist loadscope -p no:cacheprovider -rs tests \
    --ignore tests/test_cuda.py
step bench_train_cuda 80 "$py" scripts/bench_train.py --device cuda --step-rounds 5
step bench_walkforward_cuda 90 "$py" scripts/bench_walkforward.py --device cuda --repeats 3
step bench_walkforward_cpu 90 "$py" scripts/bench_walkforward.py --device cpu --repeats 3 \
    --threads 2
