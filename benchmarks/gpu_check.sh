#!/usr/bin/env bash
# Every check and figure that needs a GPU, in one run (CUDA tests, model and training
# benchmarks, one op profile), for a lent machine whose time is short. Run from the repository
# root with real data at ../shared/data (the tests and benchmarks read it there):
#
#     bash benchmarks/gpu_check.sh [OUTPUT_DIR]
#
# Each step has a time limit and its own log in OUTPUT_DIR (default: $OUT, else gpu_check_out);
# a step that fails or runs out of time does not stop the others. The figures come last.
set -u
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()

step() {  # step NAME SECONDS COMMAND...: run, log to $out/NAME.log, note a failure
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" = 0 ] || failed+=("$name")
}

nvidia-smi -L >"$out/gpu.log" 2>&1
"$python" -c 'import torch, numpy, cv2; print("torch", torch.__version__, "numpy",
numpy.__version__, "cv2", cv2.__version__, "cuda", torch.cuda.is_available())' >>"$out/gpu.log" 2>&1
cat "$out/gpu.log"

step tests 180 "$python" -m pytest -q -s -p no:cacheprovider -k cuda \
    test/test_model.py test/test_device.py test/test_cuda_graphs.py \
    test/test_fps_kernel.py test/test_preprocess_batched.py test/test_shape_prior.py \
    test/test_window_kernels.py test/test_host_transfer.py
step model 90 "$python" benchmarks/bench_model.py --device cuda --frames 30
step model_no_prior 45 "$python" benchmarks/bench_model.py --device cuda --presets tiny \
    --frames 30 --shape-prior 0
step model_eager 60 "$python" benchmarks/bench_model.py --device cuda --presets tiny \
    --frames 20 --no-cuda-graphs
step model_graphed_fps 60 "$python" benchmarks/bench_model.py --device cuda --frames 20 \
    --no-triton-fps
step model_numpy_preprocessing 45 "$python" benchmarks/bench_model.py --device cuda \
    --presets tiny --frames 20 --preprocessing numpy
step batch32 75 "$python" benchmarks/bench_model.py --device cuda --presets tiny --batch 32 \
    --frames 5
step batch32_no_prior 60 "$python" benchmarks/bench_model.py --device cuda --presets tiny \
    --batch 32 --frames 5 --shape-prior 0
step batch32_numpy 75 "$python" benchmarks/bench_model.py --device cuda --presets tiny \
    --batch 32 --frames 5 --preprocessing numpy
step train 120 "$python" benchmarks/bench_train.py --device cuda --steps 30
step train_batch64 120 "$python" benchmarks/bench_train.py --device cuda --steps 20 \
    --batch-size 64
step preprocess_stages 60 "$python" benchmarks/bench_preprocess.py --device cuda --batch 1 32 \
    --calls 30
step profile 60 "$python" benchmarks/profile_detector.py --device cuda --calls 5 --rows 15
step profile_host 60 "$python" benchmarks/profile_detector.py --device cuda --calls 10 --rows 12 \
    --sort cpu

echo
grep -hE "^E |passed|failed|losses" "$out/tests.log" | tail -n 15
for name in model model_no_prior model_eager model_graphed_fps model_numpy_preprocessing \
    batch32 batch32_no_prior batch32_numpy preprocess_stages train train_batch64; do
    echo "-- $name"
    grep -E "^\||^input|^device" "$out/$name.log" || tail -n 15 "$out/$name.log"
done
for name in profile profile_host; do
    echo "-- $name"
    grep -v "^USDT" "$out/$name.log" | head -n 24 | cut -c1-150
done
[ ${#failed[@]} = 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
