{ mkPackage, fortunes }:

mkPackage {
  pname = "fortune";
  version = "1.0";
  description = "Prints a random saying (sayings from the fortunes package)";
  substitutions = { inherit fortunes; };
  buildCommand = ''
    install_program ${./fortune.sh} fortune
  '';
}
