#!/usr/bin/env bash
# Install, once, the host tools the failing-device tests need; idempotent.
#
# Usage: tests/reliability/ensure_tools.sh [dm]
#   always  losetup (mount), mkfs.ext4 and e2fsck (e2fsprogs)
#   dm      also dmsetup (for the dm-error target)
# Exit 0 when every tool is present afterwards; otherwise non-zero with the reason on stderr.
set -euo pipefail

declare -A PACKAGE=([losetup]=mount [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs [dmsetup]=dmsetup)
tools=(losetup mkfs.ext4 e2fsck)
[ "${1:-}" = dm ] && tools+=(dmsetup)

missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/sbin:/usr/sbin" command -v "$tool" \
        >/dev/null 2>&1 || missing+=("${PACKAGE[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_tools: missing ${missing[*]} and cannot apt-get install them here" >&2
    exit 1
fi
# A lock serialises concurrent test runs; the second finds the packages installed.
exec 9>/var/lock/anu-watchd-ensure-tools.lock
flock 9
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
