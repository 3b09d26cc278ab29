#!/usr/bin/env bash
# Refits the simulator from GPU profiles and validates it, in one step (CPU; docs/simulation.md,
# "Calibration" and "Validation"):
#   1. `cadre calibrate` on the profiles (every h200x1_1gpu_* profile by default) with the kernel
#      table and `bench comm` rows -> a calibration file (deterministic: same inputs, same bytes);
#   2. scripts/validate_simulator.py with that calibration -> <out>.{md,json,svg} and
#      <out>_memory.svg; its exit status is this script's (non-zero when a gated cell misses).
# With --install the calibration also becomes the built-in one (scheduler/data/h200_calibration.json,
# compiled into cadre): the script rebuilds `cadre` and validates the built-in calibration into
# benchmarks/results/simulator_validation.*.
#
#   scripts/refit_simulator.sh [--install] [--build DIR] [--out PREFIX] [PROFILE ...]
#
# Defaults: DIR build, PREFIX benchmarks/results/simulator_validation_profile_fit (calibration
# written to benchmarks/results/h200x1_profile_calibration.json).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
out=benchmarks/results/simulator_validation_profile_fit
calibration=benchmarks/results/h200x1_profile_calibration.json
install=0
profiles=()
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "refit_simulator: unknown option '$1'; accepted: --install, --build DIR, --out PREFIX" >&2; exit 2 ;;
    *) profiles+=("$1") ;;
  esac
  shift
done
if [ ${#profiles[@]} -eq 0 ]; then
  profiles=(benchmarks/results/profiles/h200x1_1gpu_*.profile.json)
fi
for p in "${profiles[@]}"; do
  [ -f "$p" ] || { echo "refit_simulator: no profile '$p'" >&2; exit 2; }
done
cadre="$build/bin/cadre"
[ -x "$cadre" ] || { echo "refit_simulator: no $cadre (scripts/build.sh first)" >&2; exit 2; }

# Attention tables: the auto kernel's grids (what training runs) per head dim when measured
# (scripts/gpu_session.sh calgrid), else the flash kernel's; the MHA table is the flash kernel's.
kernels=()
for d in 64 128; do
  [ -f "benchmarks/results/h200x1_bench_kernel_auto_grid_d$d.json" ] &&
    kernels+=("benchmarks/results/h200x1_bench_kernel_auto_grid_d$d.json")
done
[ -f benchmarks/results/h200x1_bench_kernel_auto_grid_d128.json ] ||
  kernels+=(benchmarks/results/h200x1_bench_kernel.json)
kernels+=(benchmarks/results/h200x1_bench_kernel_mha_calibration.json)
"$cadre" calibrate --profiles "${profiles[@]}" --kernel "${kernels[@]}" \
  --comm benchmarks/results/h200x2_bench_comm.json --out "$calibration"
grep -E '"(activation_memory_scale|memory_fixed_gib|step_overhead_us)"' "$calibration" || true

if [ "$install" = 1 ]; then
  # Peak memory is counted from the tensors the runtime holds (docs/simulation.md, "Memory
  # estimate"), not fitted: the built-in file keeps activation scale 1 and no fixed part (the
  # fit's values stay in $calibration for reference).
  python3 - "$calibration" scheduler/data/h200_calibration.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["activation_memory_scale"] = 1
c["memory_fixed_gib"] = 0
with open(sys.argv[2] + ".tmp", "w") as f:
    json.dump(c, f, indent=1)
    f.write("\n")
import os
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
  cmake --build "$build" --target cadre -j "${CADRE_JOBS:-2}" >/dev/null
  echo "built in: scheduler/data/h200_calibration.json (rebuilt $cadre)"
  exec python3 scripts/validate_simulator.py --cadre "$cadre"
fi
exec python3 scripts/validate_simulator.py --cadre "$cadre" --calibration "$calibration" --out "$out"
