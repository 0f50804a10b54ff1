#!/usr/bin/env bash
# Builds everything and runs every test, the QEMU end-to-end tests included (one at a time: a TCG VM
# takes a core). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: run as root: the end-to-end tests need it for loop devices, mounts and network namespaces" >&2
    exit 1
fi

step=setup
started=$SECONDS
trap 'echo "TEST SUMMARY: FAILED during ${step} after $((SECONDS - started))s"' ERR

bash scripts/setup.sh

step="build (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins

step="unit and integration tests"
cargo test --release --workspace --exclude ferric-tests

# The end-to-end tests run the binaries built above; --nocapture shows their TIMING lines.
step="end-to-end tests (ferric-tests)"
cargo test --release -p ferric-tests -- --test-threads=1 --nocapture

echo "TEST SUMMARY: all tests passed in $((SECONDS - started))s"
