# A synthetic closure for benchmarks: about `totalMB` MiB of incompressible data spread
# over `count` store paths that depend on each other like shared libraries do.
#
#   nix-build bench.nix --option sandbox true --option substituters '' -j2 \
#     --arg totalMB 300 --arg count 30 --argstr seed 1
#
# The result is `bench-s<seed>-1.0`, an environment (like buildEnv) referring to every
# library `bench-s<seed>-lib<i>-1.0`. Library i refers to library 0 (everyone's glibc)
# and to library (i-1)/2: a heap-shaped graph with a shared bottom, shallow depth, and
# many paths in more than one library's closure. Sizes vary (weights 1..5, repeating) and
# add up to exactly totalMB MiB (plus busybox and the small top path).
#
# The bytes come from entropy.sh: deterministic for a given seed and busybox, so a rebuild
# gives the same NAR hashes; change `seed` for a fresh, uncached closure.
{ busybox ? /bin/busybox
, totalMB ? 300
, count ? 30
, seed ? "1"
, system ? builtins.currentSystem
}:

let
  bb = import ./bootstrap.nix { inherit busybox system; };
  mkPackage = import ./make.nix { inherit system; busybox = bb; };
  tag = "bench-s${toString seed}";

  totalBytes = totalMB * 1024 * 1024;
  weight = i: 1 + (i * 3) - 5 * ((i * 3) / 5);
  weights = builtins.genList weight count;
  weightSum = builtins.foldl' (a: b: a + b) 0 weights;
  # The last library takes the rounding remainder, so the sizes add up to totalBytes.
  sizeOf = i:
    if i == count - 1
    then totalBytes - builtins.foldl' (a: b: a + b) 0 (builtins.genList (j: totalBytes * weight j / weightSum) (count - 1))
    else totalBytes * weight i / weightSum;

  # One 256 KiB block shared by every library: awk draws it once, not `count` times.
  entropyBlock = mkPackage {
    pname = "${tag}-entropy";
    version = "1.0";
    description = "Seed block for the ${tag} benchmark closure (build-time only)";
    mainProgram = null;
    buildCommand = ''
      . ${./entropy.sh}
      entropy_block ${tag} > $out
    '';
  };

  dependenciesOf = i:
    if i == 0 then [ ]
    else [ (builtins.elemAt libraries 0) ]
      ++ (if (i - 1) / 2 != 0 then [ (builtins.elemAt libraries ((i - 1) / 2)) ] else [ ]);

  library = i: mkPackage {
    pname = "${tag}-lib${toString i}";
    version = "1.0";
    description = "Library ${toString i} of the ${tag} benchmark closure";
    mainProgram = null;
    env = {
      block = entropyBlock;
      bytes = toString (sizeOf i);
      index = toString i;
      dependencies = toString (dependenciesOf i);
    };
    buildCommand = ''
      . ${./entropy.sh}
      mkdir -p $out/lib $out/nix-support
      entropy_expand $block ${tag}:$index $bytes > $out/lib/libbench$index.so
      # Writing the dependencies' store paths is what makes them runtime references.
      for dependency in $dependencies; do echo $dependency; done > $out/nix-support/dependencies
    '';
  };

  libraries = builtins.genList library count;
in
assert count >= 1 && totalMB >= 1;
mkPackage {
  pname = tag;
  version = "1.0";
  description = "Benchmark closure: ${toString totalMB} MiB over ${toString count} libraries";
  env.libraries = toString libraries;
  buildCommand = ''
    mkdir -p $out/share/bench $out/bin
    for library in $libraries; do echo $library; done > $out/share/bench/libraries
    cat > $out/bin/${tag} <<EOF
    #!${bb}/bin/sh
    exec ${bb}/bin/du -shL $libraries
    EOF
    chmod 0555 $out/bin/${tag}
  '';
}
