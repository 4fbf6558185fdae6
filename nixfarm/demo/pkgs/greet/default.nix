{ mkPackage, libgreeting }:

mkPackage {
  pname = "greet";
  version = "1.0";
  description = "Greets someone in one of several languages (uses libgreeting)";
  substitutions = { inherit libgreeting; };
  buildCommand = ''
    install_program ${./greet.sh} greet
  '';
}
