#!/usr/bin/env bash
# Build, once, the Debian bookworm rootfs that tests/systemd boots with systemd-nspawn.
#
# The tree is cached outside the repository and only ever booted with
# --volatile=overlay, so it stays pristine and can be shared by concurrent runs.
# A stamp records what it was built from; a changed package list rebuilds it.
# A lock serialises builders: the second run waits, then finds the stamp.
#
# Usage: scripts/systemd-rootfs.sh            prints the rootfs path on its last line
# Env:   ANU_WATCHD_ROOTFS_CACHE              cache dir (default /var/cache/anu-watchd)
#        ANU_WATCHD_DEBIAN_MIRROR             mirror (default http://deb.debian.org/debian)
set -euo pipefail

CACHE=${ANU_WATCHD_ROOTFS_CACHE:-/var/cache/anu-watchd}
MIRROR=${ANU_WATCHD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
ROOTFS=$CACHE/rootfs-$SUITE
STAMP=$ROOTFS.stamp
# systemd as PID 1; procps for /bin/kill; full python3 (python3-minimal lacks asyncio);
# python3-venv for the install docs/operations.md gives; rsyslog and jq for its log shipping;
# dbus, which systemd-run (its one-shot commands) needs and a real host has.
PACKAGES=systemd,procps,python3,python3-venv,rsyslog,jq,dbus
WANT="suite=$SUITE packages=$PACKAGES variant=minbase v=2"

log() { printf 'systemd-rootfs: %s\n' "$*" >&2; }

need_host_tools() {
    local missing=()
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt rather than fail; refresh the lists only if the install needs it.
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
    "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2 ||
        { "${apt[@]}" update >&2 && "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2; }
}

fresh() { [ -d "$ROOTFS" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; }

build() {
    local tmp=$ROOTFS.tmp.$$
    rm -rf "$tmp" "$ROOTFS.tmp."*
    log "building $ROOTFS (mmdebstrap $SUITE: $PACKAGES)"
    local t0=$SECONDS
    mmdebstrap --variant=minbase --include="$PACKAGES" --components=main \
        --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        "$SUITE" "$tmp" "$MIRROR" >&2
    # Nothing in the container answers a login prompt, and a timer firing mid-test
    # (apt-daily, e2scrub, ...) would only add noise: boot quiet and deterministic.
    rm -f "$tmp/etc/systemd/system/getty.target.wants/"* "$tmp/etc/systemd/system/timers.target.wants/"*
    ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
    rm -rf "$ROOTFS"
    mv "$tmp" "$ROOTFS"
    printf '%s\n' "$WANT" >"$STAMP"
    log "built in $((SECONDS - t0)) s"
}

main() {
    [ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 77; }
    mkdir -p "$CACHE"
    exec 9>"$CACHE/rootfs.lock"
    flock 9
    need_host_tools
    fresh || build
    printf '%s\n' "$ROOTFS"
}

main "$@"
