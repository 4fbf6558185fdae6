#!@busybox@/bin/sh
# motd [NAME]: a message of the day: a banner, then a cow telling a fortune.
@banner@/bin/banner "${1:-nixfarm}"
echo
@fortune@/bin/fortune | @cowsay@/bin/cowsay
