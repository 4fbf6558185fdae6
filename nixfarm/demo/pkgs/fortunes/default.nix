{ mkPackage }:

mkPackage {
  pname = "fortunes";
  version = "1.0";
  description = "The sayings fortune picks from (data only, no references)";
  mainProgram = null;
  buildCommand = ''
    mkdir -p $out/share/fortunes
    cp ${./fortunes} $out/share/fortunes/fortunes
  '';
}
