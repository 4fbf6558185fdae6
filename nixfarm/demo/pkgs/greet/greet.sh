#!@busybox@/bin/sh
# greet [-l LANG] [NAME...]: greet NAME (default: world) in LANG (default: en).
. @libgreeting@/lib/greeting.sh

lang=en
while getopts 'l:L' opt; do
    case $opt in
        l) lang=$OPTARG ;;
        L) greeting_languages; exit 0 ;;
        *) echo "usage: greet [-l LANG | -L] [NAME...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

name=${*:-world}
echo "$(greeting_word "$lang"), $name!"
