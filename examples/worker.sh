#!/bin/sh
# A worker finishing a task from the shell: one durable result file through `anu-watchd emit`.
#
#   ANU_WATCHD_CONFIG=/etc/anu-watchd/anu-watchd.toml \
#       examples/worker.sh task-7 DONE dev1 "built and tested"
#
# emit reads events_dir and the collector from the daemon's config, checks the document
# against the daemon's rules and writes it atomically and durably. Its exit codes:
#   0   written: the path is printed
#   64  the daemon would quarantine this document (the reason is on stderr); nothing written
#   70  nothing was written (the cause is on stderr)
#   75  outcome unknown: the file is in place but a crash could still undo it; write the same
#       bytes again, which is the same wake, never a second one
#   78  the config is invalid
# The document goes on stdin (--json -), built once with a fixed finished_at, so a retry
# after 75 sends the same bytes (the field flags would stamp a new finished_at each time).
set -eu

task_id=$1 status=$2 executor=$3 summary=$4
collector=${ANU_COLLECTOR:-anu}
anu_watchd=${ANU_WATCHD:-anu-watchd}

json_string() {  # a JSON string literal of one line of text
    printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g')"
}

finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
doc=$(printf '{"schema":"anu.result/v1","task_id":%s,"status":%s,"executor":%s,"collector":%s,"finished_at":"%s","summary":%s}' \
    "$(json_string "$task_id")" "$(json_string "$status")" "$(json_string "$executor")" \
    "$(json_string "$collector")" "$finished_at" "$(json_string "$summary")")

for attempt in 1 2 3; do
    rc=0
    printf '%s' "$doc" | $anu_watchd emit --json - || rc=$?
    [ "$rc" -ne 75 ] && exit "$rc"
    echo "worker.sh: outcome unknown (attempt $attempt), writing the same bytes again" >&2
done
exit 75
