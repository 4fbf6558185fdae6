#!@busybox@/bin/sh
# The demo set's hello: one line, and a runtime dependency on busybox (the #! above).
echo 'Hello, world!'
