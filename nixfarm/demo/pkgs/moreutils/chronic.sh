#!@busybox@/bin/sh
# chronic COMMAND...: run COMMAND quietly; show its output only if it fails.
PATH="@busybox@/bin${PATH:+:$PATH}"
out=$(mktemp "${TMPDIR:-/tmp}/chronic.XXXXXX") || exit 1
trap 'rm -f "$out"' EXIT
"$@" > "$out" 2>&1
status=$?
[ $status -eq 0 ] || cat "$out"
exit $status
