#!@busybox@/bin/sh
# ifne COMMAND...: run COMMAND, with stdin passed on, only if stdin is not empty.
PATH="@busybox@/bin${PATH:+:$PATH}"
tmp=$(mktemp "${TMPDIR:-/tmp}/ifne.XXXXXX") || exit 1
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
[ -s "$tmp" ] || exit 0
"$@" < "$tmp"
