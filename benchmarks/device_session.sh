#!/usr/bin/env bash
# One prepared device session (a machine with a real NVIDIA GPU): what only a GPU can show.
#  1. benchmarks/gpu_device_check.py: NVML vs nvidia-smi, the real nvidia-smi format, mask → UUID, samplers under load.
#  2. The pipeline on the real GPU: a local-backend run (the sim as launcher) with CUDA_VISIBLE_DEVICES set to the
#     GPU's UUID while torch loads the GPU: the child must get the UUID, the report must carry real NVML telemetry.
# Results go to $OUT (or ./device-out). Usage: bash benchmarks/device_session.sh
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/device-out}
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  echo "== environment"; nvidia-smi -L; "$PY" -c "import sys, torch, pynvml; print(sys.version); print('torch', torch.__version__)"
  echo "== 1. gpu_device_check"
  timeout 180 "$PY" "$REPO/benchmarks/gpu_device_check.py" --seconds 15 > "$OUT/gpu_device_check.json"
  echo "exit $?"; tail -c 600 "$OUT/gpu_device_check.json"
  echo "== 2. pipeline on the real GPU"
  UUID=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1 | tr -d ' ')
  WORK=$(mktemp -d); cd "$WORK"
  cat > tune_gpu.yaml <<YAML
model: {path: Qwen/Qwen3-8B, served_name: devicecheck}
backends:
  local: {launcher: "$PY $REPO/tests/gpu/envlauncher.py", needs_gpus: true, ready_timeout: 120}
server:
  fixed: {enable-metrics: true}
workloads:
  - name: chat
    scenario: D(128,256)
    num_requests: 8
    warmup_requests: 0
    concurrency: 2
YAML
  "$PY" - <<'PYLOAD' &
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + 60
while time.time() < end:
    (a @ a).sum().item()
PYLOAD
  LOAD=$!
  sleep 3
  ENV_LOG="$WORK/env.jsonl" CUDA_VISIBLE_DEVICES="$UUID" timeout 240 "$PY" -m pytest tune_gpu.yaml \
      -p pytest_sglang_tune.plugin --backend=local -p no:cacheprovider -q -rA 2>&1 | tail -25
  echo "pytest exit ${PIPESTATUS[0]}"
  kill $LOAD 2>/dev/null; wait $LOAD 2>/dev/null
  cp "$WORK/env.jsonl" "$OUT/child_env.jsonl" 2>/dev/null
  cp reports/*/report.json "$OUT/pipeline_report.json" 2>/dev/null
  "$PY" - "$OUT/pipeline_report.json" "$UUID" <<'PYCHECK'
import json, sys
rep = json.load(open(sys.argv[1])); uuid = sys.argv[2]
(r,) = rep["results"]
t = r.get("telemetry") or {}
print("status", r["status"], "gpus_used", r.get("gpus_used"), "uuid ok", r.get("gpus_used") == [uuid])
print("telemetry source", t.get("source"), "samples", t.get("samples"), "warnings", t.get("warnings"))
for g in t.get("gpus") or []:
    print({k: g.get(k) for k in ("uuid", "name", "util_pct", "power_w", "sm_clock_mhz", "temp_c", "mem_used_mib", "throttle")})
print("machine", {k: rep["run"]["machine"].get(k) for k in ("gpus", "driver_version", "cuda_version", "gpu_source")})
PYCHECK
} 2>&1 | tee "$OUT/device_session.log"
