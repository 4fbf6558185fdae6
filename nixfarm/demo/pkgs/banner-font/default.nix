{ mkPackage }:

mkPackage {
  pname = "banner-font";
  version = "1.0";
  description = "The 5x5 block font banner draws with (data only, no references)";
  mainProgram = null;
  buildCommand = ''
    mkdir -p $out/share/banner
    cp ${./font.txt} $out/share/banner/font.txt
  '';
}
