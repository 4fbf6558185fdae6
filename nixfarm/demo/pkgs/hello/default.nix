{ mkPackage }:

mkPackage {
  pname = "hello";
  version = "2.12";
  description = "Prints 'Hello, world!' (a shell script that depends on busybox at run time)";
  buildCommand = ''
    install_program ${./hello.sh} hello
  '';
}
