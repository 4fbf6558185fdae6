{ mkPackage, busybox }:

mkPackage {
  pname = "moreutils";
  version = "0.67-busybox";
  description = "Stand-in for moreutils: sponge, chronic and ifne as scripts, ts from busybox";
  mainProgram = "sponge";
  buildCommand = ''
    install_program ${./sponge.sh} sponge
    install_program ${./chronic.sh} chronic
    install_program ${./ifne.sh} ifne
    ln -s ${busybox}/bin/busybox $out/bin/ts
  '';
}
