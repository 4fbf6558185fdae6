{ mkPackage, banner, fortune, cowsay }:

mkPackage {
  pname = "motd";
  version = "1.0";
  description = "Prints a message of the day: a banner and a cow telling a fortune (uses banner, fortune, cowsay)";
  substitutions = { inherit banner fortune cowsay; };
  buildCommand = ''
    install_program ${./motd.sh} motd
  '';
}
