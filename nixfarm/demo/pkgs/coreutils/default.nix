{ mkPackage, busybox }:

# The GNU coreutils programs that busybox implements, as links to busybox.
let
  programs = [
    "base64" "basename" "cat" "chgrp" "chmod" "chown" "chroot" "cksum" "comm" "cp" "cut"
    "date" "dd" "df" "dirname" "du" "echo" "env" "expand" "expr" "factor" "false" "fold"
    "groups" "head" "hostid" "id" "install" "link" "ln" "logname" "ls" "md5sum" "mkdir"
    "mkfifo" "mknod" "mktemp" "mv" "nice" "nl" "nohup" "nproc" "od" "paste" "printenv"
    "printf" "pwd" "readlink" "realpath" "rm" "rmdir" "seq" "sha1sum" "sha256sum"
    "sha512sum" "shred" "shuf" "sleep" "sort" "split" "stat" "stty" "sum" "sync" "tac"
    "tail" "tee" "test" "timeout" "touch" "tr" "true" "truncate" "tsort" "tty" "uname"
    "unexpand" "uniq" "unlink" "uptime" "users" "wc" "who" "whoami" "yes"
  ];
in
mkPackage {
  pname = "coreutils";
  version = "9.1-busybox";
  description = "Stand-in for GNU coreutils: the coreutils programs busybox provides, linked to it";
  mainProgram = "ls";
  env.programs = toString programs;
  buildCommand = ''
    mkdir -p $out/bin
    # Link only what this busybox really has, so no link dangles.
    for program in $programs; do
        if [ -e ${busybox}/bin/$program ]; then
            ln -s ${busybox}/bin/busybox $out/bin/$program
        fi
    done
    [ -e $out/bin/ls ] || { echo "coreutils: this busybox has no ls applet" >&2; exit 1; }
  '';
}
