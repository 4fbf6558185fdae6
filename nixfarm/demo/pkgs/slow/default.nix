{ mkPackage }:

mkPackage {
  pname = "slow";
  version = "1.0";
  description = "Never finishes building: sleeps forever (for timeouts)";
  mainProgram = null;
  buildCommand = ''
    echo "slow: sleeping forever (this package exists to test build timeouts)"
    while :; do sleep 3600; done
  '';
}
