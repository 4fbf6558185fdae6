#!@busybox@/bin/sh
# sponge [-a] FILE: soak up all of stdin, then write it to FILE (append with -a), so a
# pipeline can read and write the same file.
PATH="@busybox@/bin${PATH:+:$PATH}"
append=false
if [ "$1" = -a ]; then append=true; shift; fi
if [ $# -eq 0 ]; then exec cat; fi
tmp=$(mktemp "${TMPDIR:-/tmp}/sponge.XXXXXX") || exit 1
trap 'rm -f "$tmp"' EXIT
cat > "$tmp" || exit 1
if $append; then cat "$tmp" >> "$1"; else cat "$tmp" > "$1"; fi
