{ mkPackage }:

mkPackage {
  pname = "nano";
  version = "7.2-busybox";
  description = "Stand-in for the nano editor: opens files in busybox vi";
  buildCommand = ''
    install_program ${./nano.sh} nano
  '';
}
