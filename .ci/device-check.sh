#!/usr/bin/env bash
# On a machine the `device` tool lends (no cargo, no registry there), from the repository root,
# with the bundle `cargo xtask device-bundle` built here carried as target/device-bundle:
#   1. the bench's cases on that backend at the seed's size (DINOv3 ViT-S/16 layout, 512x288
#      input, 256x144 heatmap), batch 32: QLoRA NF4+dq with bf16 compute and bf16 mixed
#      precision (with and without recomputation), LoRA and full fine-tuning in bf16, QLoRA and
#      LoRA in f32, and the 4-bit matmul per row count;
#   2. the backend suites (`backend_tests!` modules of that backend) of tracknet-quant,
#      tracknet-vit, tracknet-train and tracknet-lora, those the bundle holds (`suites`: what
#      fits the 64 MiB).
# Everything lands in $OUT (five files: summary.txt, bench.json, report.txt, bench.log,
# tests.log) and the whole run keeps inside $DEVICE_CHECK_SECONDS (default 540).
# Dry run here on lavapipe: cargo xtask device-bundle --backend wgpu &&
#   DEVICE_CHECK_QUICK=1 OUT=/tmp/device-out bash .ci/device-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=target/device-bundle
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
deadline=$((SECONDS + ${DEVICE_CHECK_SECONDS:-540}))
say() { echo "device-check: $*" | tee -a "$OUT/summary.txt"; }
# Seconds for the next step: at most $1, and never past the deadline (0: none left; a step
# skips itself then, as `timeout 0` would mean no limit at all).
budget() {
  local left=$((deadline - SECONDS))
  if [ "$left" -le 5 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

backend=$(cat "$bundle/backend") || { say "no $bundle: run cargo xtask device-bundle here first"; exit 1; }
built_at=$(cat "$bundle/built-at")
{ date -u; uname -a; nvidia-smi 2>&1 | head -15; } >> "$OUT/summary.txt"
# The test binaries look for configs and fixtures under the checkout they were built in.
if [ "$built_at" != "$PWD" ] && [ ! -e "$built_at" ]; then
  mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
bin=/tmp/device-bin
mkdir -p "$bin"
for f in "$bundle"/*.xz; do
  b="$bin/$(basename "${f%.xz}")"
  xz -dc "$f" > "$b" 2>/dev/null \
    || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$b" \
    || { say "cannot unpack $f"; exit 1; }
  chmod +x "$b"
done
say "backend $backend, bundle of $(cat "$bundle/built-at") unpacked"

# 1. Bench cases.
size=(--batch 32 --steps 5 --warmup 2 --infer-runs 5)
[ -n "${DEVICE_CHECK_QUICK:-}" ] && size=(--quick --batch 2 --steps 2 --warmup 1 --infer-runs 1)
half=bf16 half_compute=bfloat16
[ "$backend" = wgpu ] && half=fp16 half_compute=float16 # WGSL has no bf16
cases=(
  "--mode qlora-nf4-dq --compute-dtype $half_compute --amp $half"
  "--mode qlora-nf4-dq --compute-dtype $half_compute --amp $half --grad-ckpt"
  "--mode lora --amp $half"
  "--mode full --amp $half"
  "--mode qlora-nf4-dq"
  "--mode lora"
)
jsonl=/tmp/device-cases.jsonl
: > "$jsonl"
for c in "${cases[@]}"; do
  t=$(budget 90)
  if [ "$t" -eq 0 ]; then
    say "case $c: no time left"
    continue
  fi
  # shellcheck disable=SC2086 # $c is a list of flags
  timeout "$t" "$bin/tracknet-bench" case --backend "$backend" $c "${size[@]}" > /tmp/case.json 2>> "$OUT/bench.log"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    tr -d '\n' < /tmp/case.json >> "$jsonl" && echo >> "$jsonl"
    say "case $c: ok"
  else
    echo "{\"kind\":\"case\",\"case\":\"$c\",\"backend\":\"$backend\",\"error\":\"exit $rc after at most ${t}s\"}" >> "$jsonl"
    say "case $c: exit $rc (limit ${t}s)"
  fi
done
rows=1,8,64,1024,16384
[ -n "${DEVICE_CHECK_QUICK:-}" ] && rows=1,8,64
t=$(budget 60)
if [ "$t" -gt 0 ] && timeout "$t" "$bin/tracknet-bench" q4-matmul --backend "$backend" --rows "$rows" > /tmp/q4.json 2>> "$OUT/bench.log"; then
  tr -d '\n' < /tmp/q4.json >> "$jsonl" && echo >> "$jsonl"
  say "q4-matmul: ok"
else
  say "q4-matmul: failed or no time left"
fi
python3 - "$jsonl" "$OUT/bench.json" "$backend" <<'EOF'
import json, os, subprocess, sys
cases = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip() if sys.argv[3] == "cuda" else "lavapipe"
doc = {"machine": {"nproc": os.cpu_count(), "cpu": cpu, "gpu": gpu,
                   "date": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%MZ"], capture_output=True, text=True).stdout.strip(),
                   "commit": open("target/device-bundle/commit").read().strip(),
                   "command": ".ci/device-check.sh"},
       "cases": cases}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
EOF
"$bin/tracknet-bench" report "$OUT/bench.json" > "$OUT/report.txt" 2>&1
say "bench report written ($((deadline - SECONDS)) s left)"

# 2. The backend suites, each in its package folder as cargo runs them.
for pkg in $(cat "$bundle/suites"); do
  t=$(budget 240)
  if [ "$t" -eq 0 ]; then
    say "$pkg: no time left for its $backend tests"
    continue
  fi
  echo "=== $pkg ($backend::, limit ${t}s)" >> "$OUT/tests.log"
  (cd "crates/$pkg" && timeout "$t" "$bin/it-$pkg" "$backend::" --test-threads 4) >> "$OUT/tests.log" 2>&1
  rc=$?
  say "$pkg $backend tests: exit $rc; $(grep -E '^test result' "$OUT/tests.log" | tail -1)"
done
say "done, $((deadline - SECONDS)) s of the budget left"
