# The nixfarm demo package set: a small, offline stand-in for nixpkgs.
#
# Everything is built from one static busybox binary on the host (see bootstrap.nix), so
# it builds in Nix's sandbox with no substituters and no network. Each attribute is a
# package, named as the registry and the caches see it; none is special to nixfarm's code.
#
#   nix-build default.nix -A hello --option sandbox true --option substituters ''
#
# Runtime dependency graph (arrows: "refers to at run time"; everything refers to
# busybox except the data-only packages banner-font and fortunes):
#
#   motd -> banner -> banner-font        hello, tree, nano, bigdata, coreutils,
#        -> fortune -> fortunes          bash-interactive, moreutils -> busybox
#        -> cowsay -> libgreeting <- greet
{ busybox ? /bin/busybox
, system ? builtins.currentSystem
}:

let
  # Like nixpkgs' callPackage: fill a package function's arguments from the set itself.
  callPackage = fn: overrides:
    let f = import fn;
    in f (builtins.intersectAttrs (builtins.functionArgs f) (pkgs // { inherit mkPackage; }) // overrides);

  mkPackage = import ./make.nix { inherit system; busybox = pkgs.busybox; };

  pkgs = {
    busybox = import ./bootstrap.nix { inherit busybox system; };

    hello = callPackage ./pkgs/hello { };
    libgreeting = callPackage ./pkgs/libgreeting { };
    greet = callPackage ./pkgs/greet { };
    cowsay = callPackage ./pkgs/cowsay { };
    banner-font = callPackage ./pkgs/banner-font { };
    banner = callPackage ./pkgs/banner { };
    fortunes = callPackage ./pkgs/fortunes { };
    fortune = callPackage ./pkgs/fortune { };
    tree = callPackage ./pkgs/tree { };
    motd = callPackage ./pkgs/motd { };

    # Stand-ins so the registry's `shell` meta-package (Nixery's list) resolves here.
    bashInteractive = callPackage ./pkgs/bash-interactive { };
    coreutils = callPackage ./pkgs/coreutils { };
    nano = callPackage ./pkgs/nano { };
    moreutils = callPackage ./pkgs/moreutils { };

    # Packages for the farm's edge cases: size limits, failed builds, timeouts.
    bigdata = callPackage ./pkgs/bigdata { };
    broken = callPackage ./pkgs/broken { };
    slow = callPackage ./pkgs/slow { };
  };
in
pkgs
