#!/usr/bin/env bash
# Installs the Debian packages Ferric's build and end-to-end tests need, and caches the Debian kernel
# package the ramdisk and the test OS boot. Idempotent: does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    qemu-system-x86 ovmf ipxe-qemu systemd-boot-efi binutils gdisk dosfstools mtools cpio busybox-static
    kmod xz-utils zstd dnsmasq-base iproute2 python3-venv openipmi ipmitool ipxe curl
    qemu-utils e2fsprogs fdisk util-linux mount xorriso genisoimage openssl
    mdadm xfsprogs lvm2 lldpd hdparm
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg -s "$package" 2>/dev/null || true)
    if ! grep -q '^Status: install ok installed' <<<"$status"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update
    # No daemon may start from a package (lldpd would send LLDP on the host's real network): tests run
    # their own copies inside network namespaces. policy-rc.d exit 101 forbids service starts.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        trap 'as_root rm -f "$policy"' EXIT
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "setup: all ${#packages[@]} packages present"
fi

# The kernel package (not the metapackage) the tests and the demo build the ramdisk from (the test OS
# boots the same kernel); they use the newest one cached here and never download it themselves.
kernel_cache=.cache/kernel
if compgen -G "$kernel_cache/linux-image-[0-9]*.deb" >/dev/null; then
    echo "setup: kernel package cached in $kernel_cache"
else
    resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
    kernel_package=$(resolve)
    if [ -z "$kernel_package" ]; then
        as_root apt-get update
        kernel_package=$(resolve)
    fi
    if [ -z "$kernel_package" ]; then
        echo "setup: apt cannot resolve linux-image-amd64 (run apt-get update?)" >&2
        exit 1
    fi
    echo "setup: downloading $kernel_package into $kernel_cache"
    mkdir -p "$kernel_cache"
    (cd "$kernel_cache" && apt-get download "$kernel_package")
fi

# The real `baremetal` CLI (python-ironicclient), which the compatibility test drives against the
# controller, and the sushy-tools Redfish emulator the Redfish driver is tested against.
venv=.venv
if "$venv/bin/baremetal" --version >/dev/null 2>&1 && [ -x "$venv/bin/sushy-emulator" ]; then
    echo "setup: python-ironicclient and sushy-tools present in $venv"
else
    echo "setup: installing python-ironicclient and sushy-tools into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet python-ironicclient sushy-tools
    "$venv/bin/baremetal" --version
fi
