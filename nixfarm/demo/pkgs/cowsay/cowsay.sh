#!@busybox@/bin/sh
# cowsay [-f COW] [-l] [TEXT...]: a cow says TEXT (or stdin) in a speech bubble.
. @libgreeting@/lib/greeting.sh

cows=@out@/share/cowsay/cows
cow=default
while getopts 'f:l' opt; do
    case $opt in
        f) cow=$OPTARG ;;
        l) ls "$cows" | sed 's/\.cow$//'; exit 0 ;;
        *) echo "usage: cowsay [-f COW | -l] [TEXT...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if [ ! -f "$cows/$cow.cow" ]; then
    echo "cowsay: no cow named '$cow' (try cowsay -l)" >&2
    exit 1
fi

if [ $# -gt 0 ]; then
    echo "$*"
else
    cat
fi | greeting_bubble
cat "$cows/$cow.cow"
