#!@busybox@/bin/sh
# banner [-c INK] TEXT...: TEXT in big 5-line letters, figlet-style.
PATH="@busybox@/bin${PATH:+:$PATH}"

ink='#'
while getopts 'c:' opt; do
    case $opt in
        c) ink=$OPTARG ;;
        *) echo "usage: banner [-c INK] TEXT..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -eq 0 ]; then
    echo "usage: banner [-c INK] TEXT..." >&2
    exit 2
fi

echo "$*" | awk -F '|' -v ink="$ink" -v font="@bannerFont@/share/banner/font.txt" '
    BEGIN {
        while ((getline line < font) > 0) {
            if (line ~ /^#/ || line == "") continue
            n = split(line, f, "|")
            for (r = 2; r <= n; r++) glyph[f[1], r - 1] = f[r]
            known[f[1]] = 1
        }
    }
    {
        text = toupper($0)
        for (r = 1; r <= 5; r++) row[r] = ""
        for (i = 1; i <= length(text); i++) {
            c = substr(text, i, 1)
            if (!(c in known)) c = "?"
            for (r = 1; r <= 5; r++) row[r] = row[r] glyph[c, r] "."
        }
        for (r = 1; r <= 5; r++) {
            s = row[r]
            gsub(/#/, ink, s); gsub(/\./, " ", s); sub(/ +$/, "", s)
            print s
        }
    }'
