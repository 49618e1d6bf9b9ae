#!/usr/bin/env bash
# Install what the test suite needs (the package with its test extra, QEMU as the reference
# machine, binutils for rebuilding the samples, gdb for the stub's tests, Graphviz for vmm-tcache --dot)
# and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-system-i386 >/dev/null || need_apt+=(qemu-system-x86)
command -v ld >/dev/null || need_apt+=(binutils)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v gdb >/dev/null || need_apt+=(gdb)
command -v dot >/dev/null || need_apt+=(graphviz)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "run_tests: not installing ${need_apt[*]} (needs root and apt-get); the tests that need them will skip" >&2
    fi
fi

python3 -m pip install -q -e '.[test]'
exec python3 -m pytest "$@"
