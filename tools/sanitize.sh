#!/usr/bin/env bash
# make sanitize: the C reference (darknet_ref/) and the libdarknet shim under AddressSanitizer,
# UndefinedBehaviorSanitizer (with float-cast-overflow) and LeakSanitizer.
#
# DARKNET_PARITY_SANITIZE=address,undefined,float-cast-overflow makes parity/backends/native.py build both
# with -fsanitize=... -fno-omit-frame-pointer -fno-sanitize-recover=all -g -fno-wrapv, in cache
# entries of their own. Python runs with gcc's libasan and libubsan preloaded, PYTHONMALLOC=malloc
# (Python's objects get redzones too) and halt_on_error, so the first report ends a step. Steps:
#   1. self-check (tests/test_sanitize_hook.py): a throwaway extension built by the same hook must
#      be caught writing out of bounds, overflowing an int and a float-to-int cast, and leaking;
#   2. the suite's native tests (test_native, test_reference_semantics, test_libdarknet,
#      test_recorded) under the sanitizers;
#   3. tools/sanitize_driver.py, in two processes: the recorded dev set and fixtures replayed,
#      2,000 random cases, edge cases (1x1 grids, 1 class, max=1, many boxes, NaN/Inf), the parity
#      profiles and real cfgs, pjreddie cases through Debian's libdarknet (the shim), every refusal
#      path, and sizes at the limits of int;
#   4. part of the driver again with LeakSanitizer on (CPython's own heap suppressed).
# Leaks are off in steps 1-3: CPython does not free its heap at exit.
# It fails on a non-zero exit of any step or on any sanitizer log; the logs and each step's output
# are kept in $SANITIZE_LOG_DIR (default out/sanitize). darknet's own library is not instrumented,
# but ASan's interceptors (memcpy, free, ...) and heap redzones still see what it does to our buffers.
# About 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

log_dir=${SANITIZE_LOG_DIR:-out/sanitize}
rm -rf "$log_dir"
mkdir -p "$log_dir"
log_dir=$(cd "$log_dir" && pwd)

# The real interpreter: a wrapper script (pyenv's shims are bash) must not run under the preload.
py=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
cc=$("$py" -c 'from parity.backends.native import c_compiler; print(c_compiler())')
runtimes=""
for name in libasan.so libubsan.so; do
  path=$("$cc" -print-file-name="$name")
  if [[ "$path" != /* || ! -e "$path" ]]; then
    echo "sanitize: $cc has no $name (gcc ships it: apt-get install gcc; clang is not supported here)" >&2
    exit 2
  fi
  runtimes="$runtimes $path"
done

# LeakSanitizer: CPython's and cffi's own allocations are not ours. With the allocation stack cut at
# 3 frames, a leak in our code or darknet's never has a frame in them.
if [[ "$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED"))')" == 1 ]]; then
  libpython=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LDLIBRARY"))')
else
  libpython=$(basename "$(readlink -f "$py")")
fi
printf 'leak:%s\nleak:_cffi_backend\n' "$libpython" > "$log_dir/lsan.supp"

export DARKNET_PARITY_SANITIZE=address,undefined,float-cast-overflow
export PYTHONMALLOC=malloc
asan_common="halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$log_dir/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$log_dir/ubsan"
export LSAN_OPTIONS="suppressions=$log_dir/lsan.supp:print_suppressions=0"
driver_args=()
if [[ -n "${CI:-}" ]]; then driver_args+=(--require-libdarknet); fi

reports() {
  local found
  found=$(find "$log_dir" -name 'asan.*' -o -name 'ubsan.*' | sort)
  if [[ -n "$found" ]]; then
    echo "sanitize: sanitizer report(s) in $log_dir:" >&2
    for f in $found; do echo "---- $f" >&2; cat "$f" >&2; done
    return 1
  fi
  if grep -lE 'runtime error:|ERROR: (Address|Leak)Sanitizer' "$log_dir"/*.out >/dev/null 2>&1; then
    echo "sanitize: a sanitizer report in the output of a step (see $log_dir/*.out)" >&2
    return 1
  fi
}

# launch NAME ASAN_OPTIONS COMMAND...: start a step under the preload, output to NAME.out.
# finish NAME: wait for it, show its output, stop on a failure or a report.
declare -A pids started
launch() {
  local name=$1 options=$2
  shift 2
  started[$name]=$SECONDS
  ASAN_OPTIONS="$options" LD_PRELOAD="${runtimes# }" "$@" >"$log_dir/$name.out" 2>&1 &
  pids[$name]=$!
}
finish() {
  local name=$1 rc=0
  wait "${pids[$name]}" || rc=$?
  unset "pids[$name]"
  echo "== sanitize: $name"
  cat "$log_dir/$name.out"
  if [[ $rc -ne 0 ]]; then
    reports || true
    echo "sanitize: $name failed (exit $rc)" >&2
    exit 1
  fi
  reports || { echo "sanitize: $name produced a report" >&2; exit 1; }
  echo "   $name: ok in $((SECONDS - started[$name])) s"
}
# Steps still running when this script stops are ours to end.
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT

echo "== sanitize: self-check"
start=$SECONDS
"$py" -m pytest -q -p no:cacheprovider tests/test_sanitize_hook.py 2>&1 | tee "$log_dir/self-check.out"
echo "   self-check: ok in $((SECONDS - start)) s"

no_leaks="detect_leaks=0:$asan_common"
launch native-tests "$no_leaks" "$py" -c 'import sys; sys.path.insert(0, "tools"); import pytest, sanitize_driver
sanitize_driver.route_ubsan_reports(); sys.exit(pytest.main(sys.argv[1:]))' -q -p no:cacheprovider --disable-warnings \
  tests/test_native.py tests/test_reference_semantics.py tests/test_libdarknet.py tests/test_recorded.py
finish native-tests   # it builds the sanitized modules the driver processes then share
# The driver in two processes, about equal halves.
launch driver-1 "$no_leaks" "$py" tools/sanitize_driver.py "${driver_args[@]}" \
  --sections replay,random,libdarknet,libdarknet-extremes,refusals,overflow
launch driver-2 "$no_leaks" "$py" tools/sanitize_driver.py "${driver_args[@]}" --sections extremes,profiles
finish driver-1
finish driver-2
launch leaks "detect_leaks=1:malloc_context_size=3:fast_unwind_on_malloc=0:$asan_common" \
  "$py" tools/sanitize_driver.py "${driver_args[@]}" --sections random,libdarknet,refusals --random 150 \
  --libdarknet 60
finish leaks
echo "sanitize: no sanitizer report (logs in $log_dir)"
