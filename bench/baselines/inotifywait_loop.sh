#!/bin/bash
# Baseline: the classic `inotifywait -m` loop, running the handler once per result file.
#   argv: EVENTS_DIR HANDLER LOG
# inotifywait prints "Watches established." on stderr once it is listening.
set -u
dir=$1 handler=$2 log=$3
inotifywait -m -e close_write -e moved_to --format '%f' "$dir" |
	while IFS= read -r name; do
		case $name in
		task-*.result.json) "$handler" "$log" "$name" ;;
		esac
	done
