# Sourced by every demo builder (run as "${busybox}/bin/sh -e setup.sh"), the demo set's
# tiny stdenv: PATH is busybox alone, then the package's $buildCommand runs.

export PATH="$busybox/bin"

# substitute SRC DEST: copy SRC to DEST, replacing @name@ by the value of $name for every
# name listed in $substitutions (store paths of dependencies, mostly). This is how a
# script gets the absolute store path of what it runs, and so its runtime references.
substitute() {
    sed_args=""
    for name in out $substitutions; do
        eval "value=\$$name"
        sed_args="$sed_args -e s|@$name@|$value|g"
    done
    mkdir -p "$(dirname "$2")"
    # shellcheck disable=SC2086  # the word splitting is the point
    sed $sed_args "$1" > "$2"
    if grep -q '@[a-zA-Z_][a-zA-Z_]*@' "$2"; then
        echo "substitute: $1 still has an @placeholder@ after substitution:" >&2
        grep -n '@[a-zA-Z_][a-zA-Z_]*@' "$2" >&2
        exit 1
    fi
}

# install_program SRC NAME: substitute SRC into $out/bin/NAME and make it executable.
install_program() {
    substitute "$1" "$out/bin/$2"
    chmod 0555 "$out/bin/$2"
}

eval "$buildCommand"
