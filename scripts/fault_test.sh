#!/usr/bin/env bash
# Injected faults through `mpirun cadre train` (CPU, tiny model), each checked for how it is
# detected, every rank's exit status, and what is lost; results as Markdown table rows
# (docs/reliability.md holds the measured table).
#
#   scripts/fault_test.sh [BUILD_DIR] [CASE ...]      CASE: kill kill_launcher stop ulimit enospc
#                                                      corrupt data (default: all)
#
#   kill           SIGKILL of rank 1 mid-step under `mpirun --enable-recovery` (the launcher lets
#                  the others run): ranks 0 and 2 must exit 3 within comm.timeout_seconds + margin
#                  naming the operation and rank 1; no partial checkpoint; --resume then ends with
#                  the same weights and losses as an uninterrupted run.
#   kill_launcher  the same under plain mpirun, which ends the job itself when a rank dies.
#   stop           SIGSTOP of rank 1 mid-step: the others time out naming the operation and rank 1.
#   ulimit         rank 0 killed (SIGXFSZ, `ulimit -f`) while it writes a checkpoint: the previous
#                  one stays intact and --resume continues from it.
#   enospc         the checkpoint directory on a tmpfs too small for the next checkpoint (root:
#                  a private mount namespace): every rank exits 1 naming the file and the error,
#                  the previous checkpoint stays intact, --resume continues from it.
#   corrupt        a truncated, then a byte-flipped newest checkpoint: --resume names it, falls
#                  back to the previous one and ends equal to an uninterrupted run; with every
#                  checkpoint corrupt it refuses (exit 2) naming each file.
#   data           a changed token file under --resume is refused (exit 2) naming the data.
# Exit status: 0 all passed, 1 a case failed, 77 every requested case skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD
build_dir=$(cd "${1:-${CADRE_BUILD_DIR:-build}}" && pwd)
shift || true
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(kill kill_launcher stop ulimit enospc corrupt data)
cadre=$build_dir/bin/cadre
compare=$build_dir/bin/cadre_checkpoint_compare
[ -x "$cadre" ] && [ -x "$compare" ] || { echo "fault_test: build cadre and cadre_checkpoint_compare first"; exit 1; }

timeout_s=5      # comm.timeout_seconds of the runs
margin_s=10      # allowed on top of it: MPI_Abort, the launcher's clean-up, a loaded machine
work=$(mktemp -d "${TMPDIR:-/tmp}/cadre_fault.XXXXXX")
tag=cadre_fault_$$
jobs_started=()
cleanup() {
  local status=$?
  set +e
  for pid in "${jobs_started[@]}"; do kill -9 "$pid" 2>/dev/null; done
  # Ranks of this script's jobs (marked by their environment) that are still around, stopped or not.
  for pid in $(tagged_pids); do kill -CONT "$pid" 2>/dev/null; kill -9 "$pid" 2>/dev/null; done
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "fault_test: $*"; }
# Each case runs in a subshell; its table row goes to a file.
fail_case() { say "FAIL [$case]: $*"; return 1; }
row() { echo "| $1 | $2 | $3 | $4 |" >>"$work/rows"; }

# PIDs of cadre processes started by this script (optionally: of one rank).
tagged_pids() {
  local d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = cadre ] || continue
    { tr "\0" "\n" <"$d/environ" | grep -qx "CADRE_FAULT_TAG=$tag"; } 2>/dev/null || continue
    if [ $# -eq 0 ] || tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "${d#/proc/}"
    fi
  done
}

# Each rank runs under a wrapper that records its exit status in $run_dir/rc.RANK.
wrapper=$work/rank_wrapper.sh
cat >"$wrapper" <<'EOF'
#!/bin/sh
# CADRE_FAULT_FSIZE_KB: a file size limit (ulimit -f) for rank 0 only.
if [ -n "${CADRE_FAULT_FSIZE_KB:-}" ] && [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then
  ulimit -f "$CADRE_FAULT_FSIZE_KB"
fi
"$@"
rc=$?
echo $rc >"$CADRE_FAULT_RC_DIR/rc.$OMPI_COMM_WORLD_RANK"
exit $rc
EOF
chmod +x "$wrapper"

np=3
mpi_base=(mpirun --allow-run-as-root --oversubscribe --bind-to none
          --mca btl_vader_single_copy_mechanism none -x CADRE_FAULT_TAG=$tag)
btl=self,vader,tcp
train_args() {  # DIR STEPS [more --set ...]
  local dir=$1 steps=$2
  shift 2
  echo train --config "$root_dir/configs/train_tiny.pbtxt" --set cluster.num_gpus=$np \
    --set training.steps=$steps --set training.checkpoint_every=2 --set training.keep_checkpoints=5 \
    --set comm.timeout_seconds=$timeout_s --set output.dir="$dir" \
    --set training.checkpoint_dir="$dir/ckpt" "$@"
}
# run DIR LOG [mpirun options --] cadre-args...: a job in the foreground; returns mpirun's status.
run() {
  local dir=$1 log=$2
  shift 2
  local extra=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do extra+=("$1"); shift; done
  shift
  mkdir -p "$dir"
  CADRE_FAULT_RC_DIR=$dir timeout 300 "${mpi_base[@]}" --mca btl $btl -x CADRE_FAULT_RC_DIR "${extra[@]}" -np $np \
    "$wrapper" "$cadre" "$@" </dev/null >"$log" 2>&1
}
rank_codes() {  # DIR: "rank0 rank1 rank2" exit statuses ("-": ended by the launcher)
  local dir=$1 out="" r
  for r in $(seq 0 $((np - 1))); do out+="$(cat "$dir/rc.$r" 2>/dev/null || echo -) "; done
  echo "${out% }"
}
# Whether every rank that recorded a status exited with $2 (the others were ended by the
# launcher once the first one exited non-zero), and at least one did.
codes_are() {  # DIR STATUS
  local c seen=0
  for c in $(rank_codes "$1"); do
    [ "$c" = - ] && continue
    [ "$c" = "$2" ] || return 1
    seen=1
  done
  [ $seen = 1 ]
}
# The transport's timeout line on rank(s) $1 naming an operation and rank 1 among the missing
# (all_to_all_v), or "(unknown)" (collectives cannot tell).
timeout_message() {
  echo "cadre: [a-z_()0-9]+ timed out after [0-9.]+ s on rank $1; still waiting for rank\\(s\\) (([0-9]+, )*1(, [0-9]+)*|\\(unknown\\)) "
}
metrics_lines() { [ -f "$1/metrics.jsonl" ] && wc -l <"$1/metrics.jsonl" || echo 0; }
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
# The loss of each step, the last line written for it (a resumed run appends).
losses() { awk -F'"loss":' '{split($1, a, "\"step\":"); split(a[2], s, ","); split($2, l, ","); v[s[1] + 0] = l[1]} END {for (k in v) print k, v[k]}' "$1/metrics.jsonl" | sort -n; }
no_partial_checkpoint() {  # DIR: every file in ckpt/ is a complete checkpoint
  local f
  for f in "$1"/ckpt/*; do
    [ -e "$f" ] || continue
    case "$f" in *.ckpt) "$compare" "$f" "$f" >/dev/null 2>&1 || return 1 ;; *) return 1 ;; esac
  done
}
newest() { ls "$1"/ckpt/step_*.ckpt 2>/dev/null | grep -v '\.tmp\.' | tail -1; }

# The uninterrupted reference: 10 steps, checkpoints at 2, 4, ..., 10.
reference=$work/reference
steps=10
reference_run() {
  [ -f "$reference/ckpt/step_00000010.ckpt" ] && return 0
  say "reference run ($steps steps, $np ranks)"
  run "$reference" "$work/reference.log" -- $(train_args "$reference" $steps) ||
    { cat "$work/reference.log"; say "the reference run failed"; exit 1; }
}
same_as_reference() {  # DIR: final weights, optimizer state and counters, and every step's loss
  "$compare" "$1/ckpt/step_00000010.ckpt" "$reference/ckpt/step_00000010.ckpt" --counters \
    >"$work/compare.log" 2>&1 || { cat "$work/compare.log"; return 1; }
  diff <(losses "$1") <(losses "$reference") >"$work/losses.diff" || { cat "$work/losses.diff"; return 1; }
}
# Starts a job in the background, finds rank 1's process (victim), waits until step AFTER is in
# the metrics, then a moment more: the next step is in flight.
start_job() {  # DIR AFTER [mpirun options --] cadre-args...
  local dir=$1 after=$2
  shift 2
  run "$dir" "$dir.log" "$@" &
  job=$!
  jobs_started+=("$job")
  local waited=0 target=1
  victim=""
  while :; do
    if [ "$(metrics_lines "$dir")" -ge "$target" ]; then
      [ -n "$victim" ] && break
      victim=$(tagged_pids 1)
      [ -n "$victim" ] || { fail_case "no rank 1 process found"; return 1; }
      target=$after
      continue
    fi
    sleep 0.02
    waited=$((waited + 1))
    kill -0 "$job" 2>/dev/null || { cat "$dir.log"; fail_case "the job ended before step $after"; return 1; }
    [ $waited -lt 6000 ] || { fail_case "step $after not reached in 120 s"; return 1; }
  done
  sleep 0.03
}
# Waits for the background job; sets job_rc and detect_s (seconds since $1).
finish_job() {
  set +e
  wait "$job"
  job_rc=$?
  set -e
  detect_s=$(seconds "$1" "$(now)")
}

case_kill() {  # LAUNCHER_ENDS_JOB (0/1)
  local launcher=$1 dir=$work/$case opts=(--enable-recovery --)
  [ "$launcher" = 1 ] && opts=(--)
  reference_run
  start_job "$dir" 5 "${opts[@]}" $(train_args "$dir" $steps) || return 1
  local t0
  t0=$(now)
  kill -KILL $victim
  finish_job "$t0"
  local codes
  codes=$(rank_codes "$dir")
  if [ "$launcher" = 1 ]; then
    [ "$job_rc" -ne 0 ] || fail_case "mpirun exited 0 after a rank was killed" || return 1
    grep -Eq "exited on signal 9|Exit code: +137" "$dir.log" || { cat "$dir.log"; fail_case "mpirun did not report the killed rank"; return 1; }
    awk -v d="$detect_s" -v m="$margin_s" 'BEGIN {exit !(d <= m)}' ||
      fail_case "the job took $detect_s s to end" || return 1
  else
    # Each survivor ends through its own timeout (status 3, a message naming the operation and,
    # for all_to_all_v, rank 1 among those missing; a collective cannot tell which peer is
    # missing and says "(unknown)"), unless the first one's MPI_Abort ended it before ("-").
    local r named=0
    for r in 0 2; do
      case "$(cat "$dir/rc.$r" 2>/dev/null || echo -)" in
        3|-) ;;
        *) fail_case "rank $r exit status is not 3 ($codes)"; return 1 ;;
      esac
      if grep -Eq "$(timeout_message "$r")" "$dir.log"; then
        named=$((named + 1))
      fi
    done
    [ $named -ge 1 ] || { cat "$dir.log"; fail_case "no survivor named the operation and rank 1"; return 1; }
    awk -v d="$detect_s" -v t="$timeout_s" -v m="$margin_s" 'BEGIN {exit !(d <= t + m && d >= t)}' ||
      fail_case "ranks ended $detect_s s after the kill (expected $timeout_s..$((timeout_s + margin_s)) s)" || return 1
  fi
  no_partial_checkpoint "$dir" || fail_case "a partial checkpoint was left: $(ls "$dir/ckpt")" || return 1
  local resumed_from
  resumed_from=$(basename "$(newest "$dir")")
  run "$dir" "$dir.resume.log" -- $(train_args "$dir" $steps) --resume ||
    { cat "$dir.resume.log"; fail_case "--resume failed"; return 1; }
  same_as_reference "$dir" || fail_case "the resumed run differs from the uninterrupted one" || return 1
  local op
  op=$(grep -Eo "cadre: [a-z_()0-9]+ timed out after [0-9.]+ s on rank [0-9]+; still waiting for rank\(s\) [^(]*(\(unknown\))?" "$dir.log" | head -1 | sed 's/.*cadre: \([^ ]*\) timed out.*rank(s) /\1, missing: /' || true)
  if [ "$launcher" = 1 ]; then
    row "SIGKILL rank 1 mid-step (plain mpirun)" "$detect_s s (mpirun reports rank 1, exit code 137)" \
      "ranks $codes; mpirun $job_rc" "steps after $resumed_from, redone by --resume: same weights and losses"
  else
    row "SIGKILL rank 1 mid-step (mpirun --enable-recovery)" "$detect_s s (timeout $timeout_s s; $op)" \
      "ranks $codes" "steps after $resumed_from, redone by --resume: same weights and losses"
  fi
}

case_stop() {
  local dir=$work/stop
  start_job "$dir" 3 -- $(train_args "$dir" 200) || return 1
  local t0
  t0=$(now)
  kill -STOP $victim
  finish_job "$t0"
  kill -CONT $victim 2>/dev/null || true
  local codes op
  codes=$(rank_codes "$dir")
  grep -Eq "$(timeout_message "[02]")" "$dir.log" ||
    { cat "$dir.log"; fail_case "no timeout message naming the operation and rank 1"; return 1; }
  [ "$job_rc" -ne 0 ] || fail_case "mpirun exited 0" || return 1
  awk -v d="$detect_s" -v t="$timeout_s" -v m="$margin_s" 'BEGIN {exit !(d <= t + m && d >= t)}' ||
    fail_case "the job ended $detect_s s after SIGSTOP" || return 1
  sleep 0.5
  [ -z "$(tagged_pids)" ] || fail_case "ranks are left running: $(tagged_pids)" || return 1
  no_partial_checkpoint "$dir" || fail_case "a partial checkpoint was left" || return 1
  op=$(grep -Eo "cadre: [a-z_()0-9]+ timed out after [0-9.]+ s on rank [0-9]+; still waiting for rank\(s\) [^(]*(\(unknown\))?" "$dir.log" | head -1 | sed 's/.*cadre: \([^ ]*\) timed out.*rank(s) /\1, missing: /' || true)
  row "SIGSTOP rank 1 mid-step" "$detect_s s (timeout $timeout_s s; $op)" \
    "ranks $codes; mpirun $job_rc" "the step in flight (no checkpoint touched)"
}

# The state of a 10-step run stopped after step 4 (checkpoints 2 and 4, 4 metrics lines),
# copied from the reference run, to be continued under a fault.
four_steps() {  # DIR
  rm -rf "$1"
  mkdir -p "$1/ckpt"
  cp "$reference/ckpt/step_00000002.ckpt" "$reference/ckpt/step_00000004.ckpt" "$1/ckpt/"
  head -4 "$reference/metrics.jsonl" >"$1/metrics.jsonl"
}

case_ulimit() {
  local dir=$work/ulimit
  reference_run
  four_steps "$dir"
  local size limit_kb
  size=$(stat -c %s "$dir/ckpt/step_00000004.ckpt")
  limit_kb=$((size / 1024 / 2))  # half a checkpoint: rank 0 dies inside the next one's write
  local t0
  t0=$(now)
  set +e
  # Shared memory between ranks is a file too (larger than the limit): TCP only for this run.
  btl=self,tcp run "$dir" "$dir.log" -x CADRE_FAULT_FSIZE_KB=$limit_kb -- $(train_args "$dir" $steps) --resume
  job_rc=$?
  set -e
  detect_s=$(seconds "$t0" "$(now)")
  local codes
  codes=$(rank_codes "$dir")
  [ "$(cat "$dir/rc.0" 2>/dev/null)" = 153 ] || { cat "$dir.log"; fail_case "rank 0 was not killed by SIGXFSZ (status 153) while writing"; return 1; }
  ls "$dir"/ckpt/step_00000006.ckpt.tmp.* >/dev/null 2>&1 ||
    { ls -la "$dir/ckpt"; cat "$dir.log"; fail_case "no interrupted write of step 6 found (the fault did not hit the write)"; return 1; }
  cmp -s "$dir/ckpt/step_00000004.ckpt" "$reference/ckpt/step_00000004.ckpt" ||
    fail_case "the previous checkpoint changed" || return 1
  run "$dir" "$dir.resume.log" -- $(train_args "$dir" $steps) --resume ||
    { cat "$dir.resume.log"; fail_case "--resume after the interrupted write failed"; return 1; }
  grep -q "resumed from .*step_00000004.ckpt" "$dir.resume.log" || fail_case "did not resume from step 4" || return 1
  same_as_reference "$dir" || fail_case "the resumed run differs from the uninterrupted one" || return 1
  row "rank 0 killed while writing a checkpoint (SIGXFSZ, ulimit -f $limit_kb KiB)" \
    "at once (rank 0 status 153 = SIGXFSZ; mpirun ends the job), $detect_s s for the run" "ranks $codes; mpirun $job_rc" \
    "steps 5-6 (step_4 intact; a step_6 .tmp file is left and ignored); --resume: same weights and losses"
}

# Inside a private mount namespace (this script again, under unshare -m): the checkpoint
# directory is a tmpfs of ROOM_KB; the run, then what the directory holds.
enospc_inner() {  # DIR ROOM_KB
  local dir=$1 room_kb=$2
  mount -t tmpfs -o size="${room_kb}k" cadre_fault "$dir/ckpt"
  set +e
  run "$dir" "$dir.log" -- $(train_args "$dir" $steps)
  echo $? >"$dir.mpirun_rc"
  set -e
  ls "$dir/ckpt" >"$dir.listing"
  cp "$dir/ckpt/step_00000002.ckpt" "$dir.step2.ckpt" 2>/dev/null || true
}

case_enospc() {
  local dir=$work/enospc
  if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null || ! unshare -m true 2>/dev/null; then
    say "SKIP [enospc]: a private tmpfs needs root and unshare -m"
    return 77
  fi
  reference_run
  local size room_kb t0
  size=$(stat -c %s "$reference/ckpt/step_00000010.ckpt")
  room_kb=$(((size * 3 / 2) / 1024))  # room for one checkpoint and half of the next
  mkdir -p "$dir/ckpt"
  t0=$(now)
  unshare -m "$0" "$build_dir" __enospc_inner "$dir" "$room_kb"
  job_rc=$(cat "$dir.mpirun_rc")
  detect_s=$(seconds "$t0" "$(now)")
  local codes
  codes=$(rank_codes "$dir")
  grep -q "could not write checkpoint .*step_00000004.ckpt.*No space left on device" "$dir.log" ||
    { cat "$dir.log"; fail_case "no error naming the checkpoint and the full disk"; return 1; }
  codes_are "$dir" 1 || fail_case "exit statuses are $codes, expected 1" || return 1
  [ "$(cat "$dir.listing")" = "step_00000002.ckpt" ] ||
    fail_case "after ENOSPC the directory holds: $(tr '\n' ' ' <"$dir.listing")" || return 1
  "$compare" "$dir.step2.ckpt" "$reference/ckpt/step_00000002.ckpt" --counters >/dev/null ||
    fail_case "step 2 is not intact" || return 1
  # Continue from it on a disk with room (the tmpfs went with its namespace).
  cp "$dir.step2.ckpt" "$dir/ckpt/step_00000002.ckpt"
  run "$dir" "$dir.resume.log" -- $(train_args "$dir" $steps) --resume ||
    { cat "$dir.resume.log"; fail_case "--resume from step 2 failed"; return 1; }
  grep -q "resumed from .*step_00000002.ckpt" "$dir.resume.log" || fail_case "did not resume from step 2" || return 1
  same_as_reference "$dir" || fail_case "the resumed run differs from the uninterrupted one" || return 1
  row "checkpoint directory full (tmpfs of $room_kb KiB, ENOSPC)" \
    "at once: \"rank 0 could not write checkpoint '...step_00000004.ckpt': ... No space left on device\" on every rank, $detect_s s for the run" \
    "ranks $codes; mpirun $job_rc" "steps 3-4 (step_2 intact, no temporary file left); --resume: same weights and losses"
}

case_corrupt() {
  local dir=$work/corrupt
  reference_run
  four_steps "$dir"
  local ckpt=$dir/ckpt/step_00000004.ckpt size
  size=$(stat -c %s "$ckpt")
  cp "$ckpt" "$work/step4.saved"
  truncate -s $((size / 2)) "$ckpt"
  run "$dir" "$dir.resume.log" -- $(train_args "$dir" $steps) --resume ||
    { cat "$dir.resume.log"; fail_case "--resume with a truncated newest checkpoint failed"; return 1; }
  grep -q "warning: --resume skips .*step_00000004.ckpt: .*truncated" "$dir.resume.log" ||
    { cat "$dir.resume.log"; fail_case "the truncated checkpoint was not named"; return 1; }
  grep -q "resumed from .*step_00000002.ckpt at step 2 (skipped 1" "$dir.resume.log" ||
    fail_case "did not say it fell back to step 2" || return 1
  same_as_reference "$dir" || fail_case "the resumed run differs from the uninterrupted one" || return 1
  row "newest checkpoint truncated to half" "at --resume: \"--resume skips ...step_00000004.ckpt: ... truncated\"" \
    "ranks $(rank_codes "$dir")" "steps 3-4, redone from step_2: same weights and losses"
  # A flipped byte in the middle, then every checkpoint damaged.
  four_steps "$dir"
  printf '\x55' | dd of="$ckpt" bs=1 seek=$((size / 2)) conv=notrunc status=none
  run "$dir" "$dir.resume.log" -- $(train_args "$dir" $steps) --resume ||
    { cat "$dir.resume.log"; fail_case "--resume with a corrupt newest checkpoint failed"; return 1; }
  grep -q "warning: --resume skips .*step_00000004.ckpt: .*corrupt" "$dir.resume.log" ||
    { cat "$dir.resume.log"; fail_case "the corrupt checkpoint was not named"; return 1; }
  same_as_reference "$dir" || fail_case "the resumed run differs from the uninterrupted one" || return 1
  row "one byte of the newest checkpoint changed" "at --resume: \"... is corrupt or truncated (hash mismatch)\"" \
    "ranks $(rank_codes "$dir")" "steps 3-4, redone from step_2: same weights and losses"
  four_steps "$dir"
  local f
  for f in "$dir"/ckpt/*.ckpt; do truncate -s 100 "$f"; done
  rm -f "$dir"/rc.*
  if run "$dir" "$dir.resume.log" -- $(train_args "$dir" $steps) --resume; then
    fail_case "--resume continued with every checkpoint corrupt"; return 1
  fi
  grep -q "none of the 2 checkpoints in .* reads back complete" "$dir.resume.log" ||
    { cat "$dir.resume.log"; fail_case "no error naming the corrupt checkpoints"; return 1; }
  codes_are "$dir" 2 || fail_case "exit statuses $(rank_codes "$dir"), expected 2" || return 1
  row "every checkpoint truncated" "at --resume: \"none of the 2 checkpoints ... reads back complete\" + each file's fault" \
    "ranks $(rank_codes "$dir")" "nothing is loaded; the run refuses to start"
}

case_data() {
  local dir=$work/data tokens=$work/tokens.bin i v
  : >"$tokens"
  for i in $(seq 1 3000); do
    v=$(((i * 37) % 200 + 1))
    [ $((i % 61)) -ne 0 ] || v=0
    printf "\\x$(printf %02x $v)\\x00" >>"$tokens"
  done
  run "$dir" "$dir.first.log" -- $(train_args "$dir" 4) --set data.token_file="$tokens" ||
    { cat "$dir.first.log"; fail_case "the token-file run failed"; return 1; }
  # The same contents under another name resume; changed contents do not.
  cp "$tokens" "$work/tokens_copy.bin"
  run "$dir" "$dir.same.log" -- $(train_args "$dir" 6) --set data.token_file="$work/tokens_copy.bin" --resume ||
    { cat "$dir.same.log"; fail_case "--resume with the same data under another path failed"; return 1; }
  printf '\x07\x00' | dd of="$tokens" bs=1 seek=100 conv=notrunc status=none
  rm -f "$dir"/rc.*
  if run "$dir" "$dir.changed.log" -- $(train_args "$dir" 8) --set data.token_file="$tokens" --resume; then
    fail_case "--resume continued on changed data"; return 1
  fi
  grep -q "was trained on other data (data fingerprint [0-9]*) than this run's token file '$tokens'" "$dir.changed.log" ||
    { cat "$dir.changed.log"; fail_case "no error naming the changed data"; return 1; }
  codes_are "$dir" 2 || fail_case "exit statuses $(rank_codes "$dir"), expected 2" || return 1
  row "token file changed (one token) under --resume" "at --resume: \"checkpoint ... was trained on other data ...\"" \
    "ranks $(rank_codes "$dir")" "nothing is loaded; the run refuses to start"
}

if [ "${cases[0]}" = __enospc_inner ]; then
  enospc_inner "${cases[1]}" "${cases[2]}"
  exit 0
fi
ran=0
failures=0
for case in "${cases[@]}"; do
  say "case $case"
  start=$(now)
  set +e
  case $case in
    kill) (case_kill 0) ;;
    kill_launcher) (case_kill 1) ;;
    stop) (case_stop) ;;
    ulimit) (case_ulimit) ;;
    enospc) (case_enospc) ;;
    corrupt) (case_corrupt) ;;
    data) (case_data) ;;
    *) say "unknown case '$case'; accepted: kill kill_launcher stop ulimit enospc corrupt data"; exit 1 ;;
  esac
  status=$?
  set -e
  [ $status -eq 77 ] || ran=$((ran + 1))
  [ $status -eq 0 ] || [ $status -eq 77 ] || failures=$((failures + 1))
  say "case $case: $([ $status -eq 0 ] && echo passed || ([ $status -eq 77 ] && echo skipped || echo FAILED)) in $(seconds "$start" "$(now)") s"
done
echo
echo "| fault | detection | exit status per rank (0, 1, 2) | lost |"
echo "|---|---|---|---|"
cat "$work/rows" 2>/dev/null || true
[ $failures -eq 0 ] || { say "$failures case(s) failed"; exit 1; }
[ $ran -gt 0 ] || exit 77
say "PASS"
