# Bring a static busybox binary from the host into the store as a directory package.
#
# Why this is not simply `builder = ./busybox`: a path imported on its own becomes a flat
# store file named `<hash>-busybox`, Nix runs a builder with argv[0] set to its file name,
# and busybox picks its applet from argv[0]: "<hash>-busybox" is no applet, so the build
# dies at once. A *directory* import keeps the file's own name, so
#
#   1. `builtins.path` copies the host directory holding busybox, filtered down to that one
#      file: /nix/store/<hash>-busybox-static-import/busybox (argv[0] is "busybox");
#   2. a derivation runs that file as `busybox sh` and assembles the real package:
#      bin/busybox plus one symlink per applet (bin/sh, bin/ls, ...), so every later
#      builder can be "${busybox}/bin/sh" and scripts can reference it at run time.
#
# Only the import in step 1 touches the host; it depends on nothing but the file's bytes
# and name, so the same busybox gives the same store paths on every machine.
{ busybox, system }:

let
  file = toString busybox;
  base = baseNameOf file;
  dir = dirOf file;

  entryType = d: (builtins.readDir (dirOf d)).${baseNameOf d} or "missing";
  isSymlink = d: d != "/" && entryType d == "symlink";

  # builtins.path stores a symlinked root as the symlink itself, not the directory behind
  # it, and Nix has no readlink builtin. Debian's /bin -> usr/bin is the case that matters
  # (the default argument is /bin/busybox), so look behind it under /usr.
  realDir =
    if !isSymlink dir then dir
    else if !isSymlink "/usr${dir}" && builtins.pathExists "/usr${dir}/${base}" then "/usr${dir}"
    else throw "demo: ${dir} is a symlink; pass the resolved path of busybox (realpath ${file})";

  checked =
    if builtins.substring 0 7 base != "busybox" then
      throw "demo: the busybox binary's file name must start with 'busybox' (it picks its applet from its name), not '${base}'"
    else if entryType "${realDir}/${base}" != "regular" then
      throw "demo: ${realDir}/${base} is not a regular file; pass a static busybox binary"
    else realDir;

  imported = builtins.path {
    name = "busybox-static-import";
    path = checked;
    filter = path: type: path == "${checked}/${base}";
  };
in
derivation {
  name = "busybox";
  inherit system;
  builder = "${imported}/${base}";
  args = [ "sh" "-e" ./pkgs/busybox/builder.sh ];
  bb = "${imported}/${base}";
}
// {
  pname = "busybox";
  meta = {
    description = "Tiny versions of common UNIX utilities in one static binary (the host's busybox)";
    mainProgram = "busybox";
  };
}
