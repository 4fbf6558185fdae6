{ mkPackage, banner-font }:

mkPackage {
  pname = "banner";
  version = "1.0";
  description = "Prints text in big block letters, figlet-style (font from banner-font)";
  substitutions = { bannerFont = banner-font; };
  buildCommand = ''
    install_program ${./banner.sh} banner
  '';
}
