{ mkPackage, bytes ? 110 * 1024 * 1024 }:

# Over 100 MB (and 100 MiB) of deterministic bytes that do not compress: for the size
# limits of the registry and the caches. Builds in a couple of seconds (see entropy.sh).
mkPackage {
  pname = "bigdata";
  version = "1.0";
  description = "Carries ${toString (bytes / 1048576)} MiB of incompressible data; bin/bigdata reports its size";
  env.bytes = toString bytes;
  buildCommand = ''
    . ${../../entropy.sh}
    mkdir -p $out/share/bigdata
    entropy bigdata "$bytes" > $out/share/bigdata/blob
    install_program ${./bigdata.sh} bigdata
  '';
}
