# mkPackage: the demo set's stand-in for nixpkgs' stdenv.mkDerivation.
#
# Every package is a plain `derivation` whose builder is busybox's sh running setup.sh,
# which sources nothing but busybox and then evaluates `buildCommand`. Attributes listed in
# `substitutions` are passed to the builder and replace @name@ placeholders in the files
# installed with `substitute`/`install_program` (see setup.sh).
#
# `meta` and `passthru` are attached after `derivation` because the builtin turns every
# attribute into an environment variable and cannot turn an attribute set into one.
{ busybox, system }:

{ pname
, version
, description
, buildCommand
, substitutions ? { }
, mainProgram ? pname
, passthru ? { }
, env ? { }
}:

let
  # Every script needs @busybox@ (its #! line at least).
  substituted = { inherit busybox; } // substitutions;
in
derivation ({
  name = "${pname}-${version}";
  inherit system pname version buildCommand;
  builder = "${busybox}/bin/sh";
  args = [ "-e" ./setup.sh ];
  substitutions = toString (builtins.attrNames substituted);
} // substituted // env)
// passthru
// {
  inherit pname version;
  meta = { inherit description; }
    // (if mainProgram == null then { } else { inherit mainProgram; });
}
