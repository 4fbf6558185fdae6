{ mkPackage }:

mkPackage {
  pname = "broken";
  version = "1.0";
  description = "Always fails to build, with a clear message in its build log (for failure paths)";
  mainProgram = null;
  buildCommand = ''
    echo "broken: starting the build"
    echo "error: broken: this package always fails to build (it exists to test build failures)" >&2
    exit 1
  '';
}
