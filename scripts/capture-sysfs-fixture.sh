#!/usr/bin/env bash
# Captures the sysfs/procfs files the agent's inventory reads (agent/src/inventory/) from a real QEMU VM
# with four kinds of disk and a virtio NIC, into a fixture tree for agent/tests/inventory_fixtures.rs.
#
#   scripts/capture-sysfs-fixture.sh [OUTPUT_DIR]     (default agent/tests/fixtures/inventory/qemu-4disk)
#
# The VM boots the cached Debian kernel (.cache/kernel, see scripts/setup.sh) with a busybox initrd that
# loads the disk and NIC drivers from that kernel package, copies only the files the inventory reads
# (regular files with cat, symlinks recreated with their relative targets, directories created) into a
# tree, and prints it as a base64 tar.gz between marker lines on the serial console. Symlinks stay
# relative, so the tree resolves inside the fixture directory the way it does under /sys.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-agent/tests/fixtures/inventory/qemu-4disk}
deb=$(ls -1 .cache/kernel/linux-image-[0-9]*.deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$deb" ]; then
    echo "capture: no kernel package in .cache/kernel (run scripts/setup.sh)" >&2
    exit 1
fi
for tool in qemu-system-x86_64 dpkg-deb modinfo cpio gzip /bin/busybox; do
    command -v "$tool" >/dev/null || { echo "capture: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "capture: unpacking $deb"
dpkg-deb -x "$deb" "$work/kernel"
vmlinuz=$(ls -1 "$work"/kernel/boot/vmlinuz-* | head -n 1)
moddir=$(ls -d "$work"/kernel/lib/modules/*/ | head -n 1)

# Module name (dashes as underscores) -> file, for resolving `modinfo -F depends`.
declare -A module_file
while IFS= read -r file; do
    name=$(basename "$file")
    name=${name%%.ko*}
    module_file[${name//-/_}]=$file
done < <(find "$moddir" -name '*.ko*')

# Appends MODULE's dependencies, then MODULE, to `order` (each once): insmod needs that order.
declare -A listed
order=()
add_module() {
    local name=${1//-/_} dep
    [ -n "${listed[$name]:-}" ] && return
    local file=${module_file[$name]:-}
    if [ -z "$file" ]; then
        echo "capture: module $1 is not in $deb" >&2
        exit 1
    fi
    for dep in $(modinfo -F depends "$file" | tr ',' ' '); do
        add_module "$dep"
    done
    listed[$name]=1
    order+=("$name")
}

# Driver groups, loaded one after the other so the kernel names are stable: the AHCI disk is sda,
# the virtio-scsi disk sdb.
groups=("sd_mod ahci:/sys/block/sda" "virtio_pci virtio_scsi:/sys/block/sdb" "virtio_blk:/sys/block/vda"
    "nvme:/sys/block/nvme0n1" "virtio_net:/sys/class/net/eth0")
mkdir -p "$work/initrd/lib/modules" "$work/initrd/bin" "$work/initrd/dev" "$work/initrd/proc" "$work/initrd/sys"
load_lines=""
for group in "${groups[@]}"; do
    order=()
    for module in ${group%%:*}; do
        add_module "$module"
    done
    for name in "${order[@]}"; do
        cp "${module_file[$name]}" "$work/initrd/lib/modules/$name.ko"
    done
    load_lines+="load ${order[*]}; wait_for ${group#*:}"$'\n'
done
cp /bin/busybox "$work/initrd/bin/busybox"

cat >"$work/initrd/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 >/proc/sys/kernel/printk
echo ferric-fixture >/proc/sys/kernel/hostname
[ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars
load() { for m in "\$@"; do insmod "/lib/modules/\$m.ko" || echo "capture: insmod \$m failed"; done; }
wait_for() {
    for i in \$(seq 300); do [ -e "\$1" ] && return 0; sleep 0.1; done
    echo "capture: \$1 never appeared"
}
$load_lines
ip link set eth0 up
for i in \$(seq 50); do [ "\$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
EOF
cat >>"$work/initrd/init" <<'EOF'
T=/tree
# Copies PATH into $T: every symlink on the way is recreated with its own (relative) target and followed,
# directories are created, and a final regular file is copied with cat (dropped when unreadable). A
# final symlink is only recreated, not followed.
mirror() {
    [ -e "$1" ] || [ -L "$1" ] || return 0
    local rest=${1#/} cur= c
    local IFS=/
    set -- $rest
    unset IFS
    local n=$#
    for c in "$@"; do
        n=$((n - 1))
        cur="$cur/$c"
        if [ -L "$cur" ]; then
            if [ ! -L "$T$cur" ]; then
                mkdir -p "$T${cur%/*}"
                ln -s "$(readlink "$cur")" "$T$cur"
            fi
            [ "$n" -eq 0 ] && return 0
            cur=$(readlink -f "$cur")
            mkdir -p "$T$cur"
        fi
    done
    if [ -d "$cur" ]; then
        mkdir -p "$T$cur"
    elif [ -f "$cur" ]; then
        mkdir -p "$T${cur%/*}"
        cat "$cur" >"$T$cur" 2>/dev/null || rm -f "$T$cur"
    fi
}
# The device directories from DIR up to /sys/devices with what udev's path_id and lsblk's transport
# detection read from them: the subsystem link and the SCSI host, ATA port, FC and SAS class attributes.
chain() {
    local d=$1 name
    while [ -n "$d" ] && [ "$d" != /sys/devices ] && [ "$d" != /sys ]; do
        name=${d##*/}
        mirror "$d/subsystem"
        case $name in
            host[0-9]*)
                mirror "$d/scsi_host/$name/proc_name"
                mirror "$d/fc_host/$name/symbolic_name"
                for class in sas_host iscsi_host spi_host; do mirror "$d/$class/$name"; done
                ;;
            ata[0-9]*) mirror "$d/ata_port/$name/port_no" ;;
            target[0-9]*) mirror "$d/fc_transport/$name/port_name" ;;
            end_device-*) for a in sas_address phy_identifier; do mirror "$d/sas_device/$name/$a"; done ;;
            expander-*) mirror "$d/sas_device/$name/sas_address" ;;
            port-*) mirror "$d/sas_port/$name/num_phys" ;;
        esac
        d=${d%/*}
    done
}

for b in /sys/block/*; do
    for a in size serial nsid wwid queue/rotational queue/logical_block_size queue/physical_block_size \
        device/model device/vendor device/serial device/wwid device/type device/ieee1394_id \
        device/vpd_pg80 device/vpd_pg83 device/vpd_pg89 device; do
        mirror "$b/$a"
    done
    chain "$(readlink -f "$b")"
    chain "$(readlink -f "$b/device")"
done
# NVMe multipath namespaces hang below a virtual nvme-subsystem device; path_id finds the real
# controller through the nvme class.
for c in /sys/class/nvme/*; do
    mirror "$c"
    chain "$(readlink -f "$c")"
done
for n in /sys/class/net/*; do
    for a in address carrier speed device/vendor device/device device/driver device; do
        mirror "$n/$a"
    done
    chain "$(readlink -f "$n")"
    [ -e "$n/device" ] && chain "$(readlink -f "$n/device")"
done
for a in product_name product_serial sys_vendor bios_vendor bios_version bios_date; do
    mirror "/sys/class/dmi/id/$a"
done
for c in /sys/devices/system/cpu/cpu[0-9]*; do
    mirror "$c/topology/physical_package_id"
    mirror "$c/cpufreq/cpuinfo_max_freq"
done
mirror /sys/devices/system/memory/block_size_bytes
for m in /sys/devices/system/memory/memory[0-9]*; do mirror "$m/online"; done
mirror /sys/firmware/efi
mirror /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
mkdir -p "$T/proc/sys/kernel"
for f in cpuinfo meminfo sys/kernel/hostname; do cat "/proc/$f" >"$T/proc/$f"; done

echo FERRIC-FIXTURE-BEGIN
tar -c -C "$T" . | gzip -9 | base64
echo FERRIC-FIXTURE-END
poweroff -f
EOF
chmod 755 "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

disk() { truncate -s "$2" "$work/$1.raw"; echo "if=none,id=$1,format=raw,file=$work/$1.raw"; }
echo "capture: booting the VM (TCG, well under a minute)"
timeout 600 qemu-system-x86_64 -accel tcg -machine q35 -m 512 -smp 2 -nographic -vga none -no-reboot \
    -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet loglevel=1 panic=-1" \
    -smbios type=1,serial=FERRIC-QEMU-0001 \
    -drive "$(disk virtio 3G)" -device virtio-blk-pci,drive=virtio,serial=FERRIC-VIRTIO-1 \
    -device virtio-scsi-pci,id=scsi0 \
    -drive "$(disk scsi 4G)" -device scsi-hd,bus=scsi0.0,drive=scsi,serial=FERRIC-SCSI-1,wwn=0x5000c500a1b2c3d4 \
    -drive "$(disk nvme 5G)" -device nvme,drive=nvme,serial=FERRIC-NVME-1 \
    -drive "$(disk ide 2G)" -device "ide-hd,bus=ide.0,drive=ide,model=FERRIC IDE DISK" \
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,mac=52:54:00:fe:00:01 \
    </dev/null >"$work/console.log" 2>&1 || true

tr -d '\r' <"$work/console.log" | sed -n '/FERRIC-FIXTURE-BEGIN$/,/^FERRIC-FIXTURE-END$/p' |
    sed '1d;$d' >"$work/tree.b64"
if [ ! -s "$work/tree.b64" ]; then
    echo "capture: the VM printed no fixture; its console said:" >&2
    tail -n 40 "$work/console.log" >&2
    exit 1
fi
grep '^capture:' "$work/console.log" >&2 || true
rm -rf "$out"
mkdir -p "$out"
base64 -d "$work/tree.b64" | tar -xz -C "$out"
echo "capture: wrote $(find "$out" | wc -l) entries to $out"
