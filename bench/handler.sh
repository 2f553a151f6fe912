#!/bin/bash
# The per-file handler every system runs: the wake a user would script.
# Its first act is to record its own start time, so "rename -> handler start"
# is measured the same way for anu-watchd's exec sink and for the baselines.
#   argv: LOG [NAME]   NAME defaults to the exec sink's idempotency key
# One printf is one O_APPEND write of one short line: concurrent handlers never interleave.
printf '%s %s\n' "${2:-$ANU_WATCHD_IDEMPOTENCY_KEY}" "$EPOCHREALTIME" >>"$1"
# The exec sink reads the schedule id from the first line of stdout.
echo "bench-$$"
