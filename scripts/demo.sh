#!/usr/bin/env bash
# The README's demo: builds Ferric and deploys a test OS to a blank UEFI QEMU VM, printing the timeline.
# Arguments go to ferric-demo (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root: like the end-to-end tests, it needs loop devices, mounts and network namespaces" >&2
    exit 1
fi

bash scripts/setup.sh
cargo build --release --workspace --bins
exec target/release/ferric-demo "$@"
