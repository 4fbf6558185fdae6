{ mkPackage }:

mkPackage {
  pname = "tree";
  version = "2.1";
  description = "Lists the contents of directories as an indented tree";
  buildCommand = ''
    install_program ${./tree.sh} tree
  '';
}
