#!/usr/bin/env bash
# Lint the systemd units in units/ (called from `make test`).
#
# 1. `systemd-analyze verify` on every unit. It exits 0 on "..., ignoring" warnings
#    (unknown keys, unparsable values), so ANY output is a failure, not only the exit code.
#    verify also insists that ExecStart= binaries exist; anu-watchd is not installed on a
#    build host, so the units are verified from copies whose /usr/local/bin/anu-watchd
#    points at a stub. tests/systemd verifies the unmodified units with the real binary.
# 2. `systemd-analyze security --offline=true`: print the exposure of each service and
#    fail above MAX_EXPOSURE (1.2; systemd's own timesyncd scores 2.3 on Debian 12).
# 3. The cron example: five time fields, root, the journal, a `flock -n` guarded scan.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNITS=${ANU_WATCHD_UNITS_DIR:-$HERE/units}
BIN=/usr/local/bin/anu-watchd
MAX_EXPOSURE=${MAX_EXPOSURE:-1.2}
# The services whose exposure is gated; the figure of the first is the one the issue names.
GATED=(anu-watchd.service anu-watchd-scan.service)

fail=0
err() { printf 'lint-units: FAIL: %s\n' "$*" >&2; fail=1; }

command -v systemd-analyze >/dev/null ||
    { echo "lint-units: systemd-analyze not found (apt-get install systemd)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/units"
printf '#!/bin/sh\nexit 0\n' >"$work/bin/anu-watchd"
chmod 0755 "$work/bin/anu-watchd"

shopt -s nullglob
units=("$UNITS"/*.service "$UNITS"/*.path "$UNITS"/*.socket "$UNITS"/*.timer)
[ ${#units[@]} -gt 0 ] || { err "no units in $UNITS"; exit 1; }
for unit in "${units[@]}"; do
    sed "s#$BIN#$work/bin/anu-watchd#g" "$unit" >"$work/units/$(basename "$unit")"
done

for unit in "${units[@]}"; do
    name=$(basename "$unit")
    # verify puts the directory of the file it is given on the unit search path, so
    # Unit= and the like resolve to these copies rather than to anything on the host.
    if ! out=$(cd "$work/units" && systemd-analyze verify --man=no "./$name" 2>&1) || [ -n "$out" ]; then
        err "systemd-analyze verify $name:"
        # Name the real file and binary, not the stubbed copies (line numbers are the same).
        printf '%s\n' "$out" | sed "s#$work/bin/anu-watchd#$BIN#g; s#$work/units/#$UNITS/#g; s#^#    #" >&2
    else
        echo "lint-units: verify $name: clean"
    fi
done

for name in "${GATED[@]}"; do
    out=$(systemd-analyze security --offline=true --no-pager "$UNITS/$name" 2>&1) || true
    exposure=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ -z "$exposure" ]; then
        err "systemd-analyze security $name printed no exposure figure:"
        printf '%s\n' "$out" | tail -5 >&2
    elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e > m) }'; then
        err "$name exposure $exposure > $MAX_EXPOSURE:"
        printf '%s\n' "$out" | grep '✗' >&2 || true
    else
        echo "lint-units: security $name: exposure $exposure (max $MAX_EXPOSURE)"
    fi
done

cron=$UNITS/anu-watchd.cron
# A job line: five time fields, root (the scan drops to the spool's owner after reading
# the key), then its output to the journal and a command that takes a non-blocking flock.
job='^([^[:space:]#=]+[[:space:]]+){5}root[[:space:]]+systemd-cat -t anu-watchd-cron flock -n [^[:space:]]+ '"$BIN"' scan --once$'
if [ ! -f "$cron" ]; then
    err "missing $cron"
elif [ "$(grep -cE "$job" "$cron")" -ne 1 ]; then
    err "$cron: expected exactly one job line matching: $job"
elif grep -vE "$job"'|^#|^$|^[A-Z_]+=' "$cron" >&2; then
    err "$cron: lines above are neither comments, variables nor the job"
else
    echo "lint-units: cron $(basename "$cron"): ok"
fi

exit "$fail"
