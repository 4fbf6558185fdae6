# The registry's one Nix expression: import a package set, look up packages by name.
#
#   nix-instantiate --eval --strict --json image.nix -A info --argstr request '<JSON>'
#   nix-build image.nix -A outputs --argstr request '<JSON>'
#
# `request` is a JSON document (never Nix code):
#   { "source": { "kind", "location", "entry", "ref", "rev", "sha256" },
#     "packages": [ "hello", "haskellpackages.pandoc", ... ], "system": "x86_64-linux" }
# Package names only ever reach Nix as strings inside that document, and are used only
# as attribute names (`set ? ${name}`, `set.${name}`), so a name cannot run code.
{ request }:

let
  req = builtins.fromJSON request;
  src = req.source;

  optional = cond: attrs: if cond then attrs else { };

  root =
    if src.kind == "path" then src.location
    else if src.kind == "git" then
      builtins.fetchGit ({ url = src.location; }
        // optional (src.rev != "") { rev = src.rev; allRefs = true; }
        // optional (src.ref != "") { ref = src.ref; })
    else if src.kind == "channel" then
      builtins.fetchTarball ({ url = src.location; } // optional (src.sha256 != "") { sha256 = src.sha256; })
    else throw "nixfarm: unknown package source kind ${src.kind}";

  file = if src.entry == "" then root else "${root}/${src.entry}";
  imported = import file;
  pkgs =
    if builtins.isFunction imported
    then imported (builtins.intersectAttrs (builtins.functionArgs imported) { system = req.system; })
    else imported;

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;

  # One attribute of `set`: exactly `segment`, else the one name equal to it ignoring case
  # (image names are lower-case, attribute names often are not).
  lookupIn = set: segment:
    if set ? ${segment} then { found = true; value = set.${segment}; }
    else
      let matches = builtins.filter (n: toLower n == segment) (builtins.attrNames set);
      in if builtins.length matches == 1
         then { found = true; value = set.${builtins.head matches}; }
         else { found = false; };

  segmentsOf = name: builtins.filter builtins.isString (builtins.split "\\." name);

  resolve = name:
    let
      step = acc: segment:
        if acc.found && builtins.isAttrs acc.value && !(acc.value.type or "" == "derivation")
        then lookupIn acc.value segment
        else { found = false; };
      walked = builtins.foldl' step { found = true; value = pkgs; } (segmentsOf name);
      usable = walked.found && builtins.isAttrs walked.value
        && (walked.value.type or "") == "derivation";
    in if usable then { found = true; drv = walked.value; } else { found = false; };

  resolved = map (name: { inherit name; r = resolve name; }) req.packages;
  found = builtins.filter (p: p.r.found) resolved;

  outputsOf = drv: drv.meta.outputsToInstall or [ (drv.outputName or "out") ];
  outputDrvs = p: map (o: p.r.drv.${o}) (outputsOf p.r.drv);
in
{
  info = {
    missing = map (p: p.name) (builtins.filter (p: !p.r.found) resolved);
    packages = map (p: { name = p.name; paths = map (d: d.outPath) (outputDrvs p); }) found;
  };
  outputs = builtins.concatLists (map outputDrvs found);

  # For popularity computed from the source: each top-level package's name and the
  # names of the derivations its attributes refer to.
  dependencies =
    let
      names = builtins.attrNames pkgs;
      refsOf = drv:
        let
          contexts = map
            (v: let s = builtins.tryEval (toString v); in if s.success then builtins.getContext s.value else { })
            (builtins.attrValues (drv.drvAttrs or { }));
        in builtins.attrNames (builtins.foldl' (a: b: a // b) { } contexts);
      entry = name:
        let
          tried = builtins.tryEval (
            let v = pkgs.${name}; in
            if builtins.isAttrs v && (v.type or "") == "derivation"
            then { name = v.name; refs = refsOf v; } else null);
        in if tried.success then tried.value else null;
    in builtins.filter (e: e != null) (map entry names);
}
