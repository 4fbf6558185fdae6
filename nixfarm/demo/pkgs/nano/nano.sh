#!@busybox@/bin/sh
# Stand-in for nano: busybox vi (there is no nano in busybox). Ignores nano's options.
while [ $# -gt 0 ]; do
    case $1 in
        --) shift; break ;;
        -*) shift ;;
        *) break ;;
    esac
done
exec @busybox@/bin/vi "$@"
