#!/usr/bin/env bash
# Run GPU benchmarks on the lent H200 from the repository root: installs carried wheels (.whl/)
# and runs each named bench as `python -m bench.bench_<name>` with a time limit, saving its log
# under $OUT (or bench/results/); each bench also appends its JSON rows to bench/results/.
#   bash bench/run_gpu.sh "sam3:420" "fov:120"      # name:timeout_seconds[:extra args]
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}
if ls $WHEELS/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}; limit=${rest%%:*}; extra=""
  [ "$rest" != "$limit" ] && extra=${rest#*:}
  echo "=== bench_$name (limit ${limit}s) $extra"
  timeout "$limit" python3 -m "bench.bench_$name" $extra 2>&1 | tee "$OUT/bench_$name.log"
  echo "=== bench_$name exit ${PIPESTATUS[0]}"
done
