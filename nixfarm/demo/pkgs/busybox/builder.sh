# Run by the imported busybox as `busybox sh -e builder.sh`; PATH is unset, so every
# command is called through "$bb" rather than trusting the shell to find applets.
"$bb" mkdir -p "$out/bin"
"$bb" cp "$bb" "$out/bin/busybox"
"$bb" chmod 0555 "$out/bin/busybox"
for applet in $("$bb" --list); do
    if [ "$applet" != busybox ]; then
        "$bb" ln -s busybox "$out/bin/$applet"
    fi
done
