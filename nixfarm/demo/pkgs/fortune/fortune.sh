#!@busybox@/bin/sh
# fortune [-n N] [FILE]: print a random saying, or saying number N (from 1), from the
# %-separated FILE (default: the fortunes package's collection).
PATH="@busybox@/bin${PATH:+:$PATH}"

number=0
while getopts 'n:' opt; do
    case $opt in
        n) number=$OPTARG ;;
        *) echo "usage: fortune [-n N] [FILE]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
file=${1:-@fortunes@/share/fortunes/fortunes}

# awk's srand() with no argument seeds from the clock; mixing in the PID keeps two calls in
# the same second apart.
awk -v pick="$number" -v pid="$$" '
    BEGIN { RS = "%\n"; srand(); srand(srand() + pid) }
    { saying[NR] = $0 }
    END {
        if (NR == 0) { print "fortune: no sayings" > "/dev/stderr"; exit 1 }
        n = pick > 0 ? pick : int(rand() * NR) + 1
        if (n > NR) { print "fortune: only " NR " sayings" > "/dev/stderr"; exit 1 }
        printf "%s", saying[n]
        if (saying[n] !~ /\n$/) print ""
    }' "$file"
