#!@busybox@/bin/sh
# bigdata: report the size of the data this package carries.
PATH="@busybox@/bin${PATH:+:$PATH}"
blob=@out@/share/bigdata/blob
bytes=$(stat -c %s "$blob") || exit 1
echo "bigdata: $bytes bytes ($((bytes / 1048576)) MiB) in $blob"
