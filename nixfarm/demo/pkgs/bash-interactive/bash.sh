#!@busybox@/bin/sh
# Stand-in for bash: busybox's ash, which runs most interactive and simple bash use.
exec @busybox@/bin/sh "$@"
