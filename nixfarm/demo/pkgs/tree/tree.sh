#!@busybox@/bin/sh
# tree [DIR...]: list directories as an indented tree, then count what was listed.
PATH="@busybox@/bin${PATH:+:$PATH}"

[ $# -gt 0 ] || set -- .
status=0
for top in "$@"; do
    if [ ! -d "$top" ]; then
        echo "tree: $top: not a directory" >&2
        status=1
        continue
    fi
    echo "$top"
    # Directories get a trailing slash. Sorting with "/" swapped for \001 (below every
    # printable byte) puts parents before children and "a/" before "a-b", as tree does.
    (cd "$top" && { find . -mindepth 1 -type d | sed 's|$|/|'; find . -mindepth 1 ! -type d; } |
        tr / '\001' | LC_ALL=C sort | tr '\001' /) | awk '
        {
            path = substr($0, 3)
            dir = sub(/\/$/, "", path)
            depth = split(path, parts, "/")
            level[NR] = depth; name[NR] = parts[depth]; isdir[NR] = dir
        }
        END {
            for (i = 1; i <= NR; i++) {
                # A vertical bar continues below an entry only if a sibling follows it.
                last = 1
                for (j = i + 1; j <= NR && level[j] >= level[i]; j++)
                    if (level[j] == level[i]) { last = 0; break }
                open[level[i]] = !last
                prefix = ""
                for (d = 1; d < level[i]; d++) prefix = prefix (open[d] ? "|   " : "    ")
                if (isdir[i]) dirs++; else files++
                print prefix (last ? "`-- " : "|-- ") name[i] (isdir[i] ? "/" : "")
            }
            printf "\n%d directories, %d files\n", dirs, files
        }'
done
exit $status
