#!/usr/bin/env bash
# The contrastive kernels' GPU check in one short call: compiled Triton tests, the CUDA benchmark at the goal
# size (N = M = 32768, d = 256, bf16) and the largest CLIP cell with the goal table, and a few paper-scale
# ucl training steps.
#
#   benchmarks/gpu_check.sh fetch   (a machine with PyPI) wheels the GPU image may lack -> .whl/
#   benchmarks/gpu_check.sh run     (the GPU machine) writes gpu_tests.log, gpu_bench.log, gpu_ucl.log and
#                                   kernels_cuda-*.md/.csv to $OUT, else benchmarks/results/; about 7
#                                   minutes on an H100 (estimated: no GPU has run it yet)
#
# The GPU machine needs python3 with torch, triton and pytest; .whl/ supplies what its image lacks (open_clip
# for eager CLIP, Inf-CL, Cut Cross-Entropy, pytorch-metric-learning for the peer tests, Hydra for the ucl
# steps). Time limits (150 + 300 + 100 s) keep the run inside one device call (10 minutes): from the device
# tool, run(command="bash benchmarks/gpu_check.sh run", carry=[".whl"], timeout_s=580).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(open_clip_torch ftfy wcwidth pytorch-metric-learning inf-cl cut-cross-entropy
    hydra-core omegaconf antlr4-python3-runtime)
PY=${PYTHON:-python3}

fetch() {
    mkdir -p .whl
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    echo "wheels in .whl/; carry .whl to the GPU machine"
}

run() {
    local out=${OUT:-benchmarks/results}
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site .whl/*.whl &&
            export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_tests.log"
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' |
        tee -a "$out/gpu_tests.log"

    # Compiled kernels against the float64 reference (plus the CPU kernel tests, as a sanity check).
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider -n 8 tests/kernels 2>&1 |
        tee -a "$out/gpu_tests.log"
    local tests_rc=${PIPESTATUS[0]}

    # Goal cells: every variant at N = 32768, d = 256 and CLIP at N = 131072, d = 768; compile only where a
    # goal names it (each variant costs tens of seconds to compile).
    timeout 300 "$PY" -m benchmarks.kernels --device cuda --n 32768 --d 256 --no-goal --small-n 0 \
        --providers ours eager compile inf_cl cce matmul_topk --compile-variants plain clip \
        --rounds 3 --rep-ms 60 --out "$out" 2>&1 | tee "$out/gpu_bench.log"
    local bench_rc=${PIPESTATUS[0]}

    # The kernels inside real training: ucl at paper scale (ResNet-50, batch 256, bf16 mixed precision) for
    # a few steps on random CIFAR-shaped data.
    timeout 100 "$PY" -m common.run experiment=ucl/objectives scale=paper data.source=random \
        trainer.max_epochs=1 +trainer.limit_train_batches=5 +trainer.limit_val_batches=2 \
        method.probe_epochs=2 logger=none runtime.checkpoint=false runtime.output_root=/tmp/gpu_check_runs \
        2>&1 | tail -60 | tee "$out/gpu_ucl.log"
    local ucl_rc=${PIPESTATUS[0]}
    echo "tests exit $tests_rc, benchmark exit $bench_rc, ucl paper-scale steps exit $ucl_rc" |
        tee -a "$out/gpu_tests.log"
    [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$ucl_rc" -eq 0 ]
}

case "${1:-}" in
fetch) fetch ;;
run) run ;;
*)
    echo "usage: benchmarks/gpu_check.sh fetch|run" >&2
    exit 2
    ;;
esac
