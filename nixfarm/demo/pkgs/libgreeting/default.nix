{ mkPackage }:

mkPackage {
  pname = "libgreeting";
  version = "1.0";
  description = "Shell library of greetings in several languages and a speech-bubble drawer, shared by greet and cowsay";
  mainProgram = null;
  buildCommand = ''
    substitute ${./greeting.sh} $out/lib/greeting.sh
    mkdir -p $out/share/greeting
    cp ${./greetings.tsv} $out/share/greeting/greetings.tsv
  '';
}
