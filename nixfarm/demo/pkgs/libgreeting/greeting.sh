# libgreeting: shell functions shared by greet and cowsay, sourced, never run.
# Referencing busybox here makes it a runtime dependency, as libc is for a C library.
PATH="@busybox@/bin${PATH:+:$PATH}"

GREETING_DATA="@out@/share/greeting/greetings.tsv"

# greeting_word LANG: the word for "hello" in LANG (two-letter code), English if unknown.
greeting_word() {
    awk -F '\t' -v lang="$1" '
        $1 == lang { print $2; found = 1; exit }
        $1 == "en" { fallback = $2 }
        END { if (!found) print fallback }
    ' "$GREETING_DATA"
}

# greeting_languages: the known language codes, one a line.
greeting_languages() {
    cut -f1 "$GREETING_DATA"
}

# greeting_bubble: draw stdin inside a speech bubble, lines wrapped at 40 columns.
greeting_bubble() {
    fold -s -w 40 | awk '
        { sub(/[ \t]+$/, ""); line[NR] = $0; if (length($0) > w) w = length($0) }
        END {
            bar = ""; for (i = 0; i < w + 2; i++) bar = bar "-"
            print " " bar
            for (i = 1; i <= NR; i++) {
                if (NR == 1) { l = "<"; r = ">" }
                else if (i == 1) { l = "/"; r = "\\" }
                else if (i == NR) { l = "\\"; r = "/" }
                else { l = "|"; r = "|" }
                printf "%s %-" w "s %s\n", l, line[i], r
            }
            print " " bar
        }'
}
