# Deterministic, incompressible-looking bytes made quickly with busybox alone.
#
# Hashing a counter (one sha256sum per 32 bytes) costs a process per 32 bytes; awk's
# rand() makes ~0.5 MB/s. So awk makes one small random block (256 KiB), and the stream is
# that block pushed through `tr` once per chunk with a different random byte permutation
# each time (also drawn by awk). Two chunks then agree on a run of bytes only by chance,
# so LZ compressors (gzip, xz, zstd --long) find nothing to match and the entropy coder
# sees uniform bytes: the output does not shrink. Measured here: 100 MiB in ~1.3 s.
#
# Everything follows from the seed string through awk's srand(); the same busybox gives
# the same bytes, so an input-addressed output has the same NAR hash on every machine.

# seed_number STRING: a non-negative integer for awk's srand(), derived from STRING.
seed_number() {
    echo $(( 0x$(printf '%s' "$1" | md5sum | cut -c1-7) ))
}

# entropy_block SEED: write 256 KiB of pseudo-random bytes to stdout.
entropy_block() {
    awk -v seed="$(seed_number "block:$1")" 'BEGIN {
        srand(seed)
        for (i = 0; i < 262144; i++) printf "%02x", int(rand() * 256)
    }' | xxd -r -p
}

# entropy_expand BLOCK SEED BYTES: write BYTES bytes to stdout, one permuted copy of the
# 256 KiB file BLOCK per chunk, permutations drawn from SEED.
entropy_expand() {
    awk -v seed="$(seed_number "perm:$2")" -v n="$(( ($3 + 262143) / 262144 ))" 'BEGIN {
        srand(seed)
        for (c = 0; c < n; c++) {
            for (i = 0; i < 256; i++) p[i] = i
            for (i = 255; i > 0; i--) { j = int(rand() * (i + 1)); t = p[i]; p[i] = p[j]; p[j] = t }
            s = ""
            for (i = 0; i < 256; i++) s = s sprintf("\\%03o", p[i])
            print s
        }
    }' | while read -r perm; do
        tr '\000-\377' "$perm" < "$1"
    done | head -c "$3"
}

# entropy SEED BYTES: entropy_block and entropy_expand in one go.
entropy() {
    entropy_block "$1" > "$TMPDIR/entropy-block"
    entropy_expand "$TMPDIR/entropy-block" "$1" "$2"
    rm -f "$TMPDIR/entropy-block"
}
