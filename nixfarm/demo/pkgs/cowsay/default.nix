{ mkPackage, libgreeting }:

mkPackage {
  pname = "cowsay";
  version = "3.7";
  description = "A cow (or a penguin) says something in a speech bubble (uses libgreeting)";
  substitutions = { inherit libgreeting; };
  buildCommand = ''
    install_program ${./cowsay.sh} cowsay
    mkdir -p $out/share/cowsay/cows
    cp ${./default.cow} $out/share/cowsay/cows/default.cow
    cp ${./tux.cow} $out/share/cowsay/cows/tux.cow
  '';
}
