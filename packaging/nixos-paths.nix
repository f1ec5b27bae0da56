# Path rules of the NixOS module in flake.nix. Builtins only, so they evaluate
# without nixpkgs (tests/packaging runs them through nix-instantiate).
let
  # "/a//b/" -> [ "a" "b" ]
  components = path: builtins.filter (c: builtins.isString c && c != "") (builtins.split "/+" path);
  normalize = path: "/" + builtins.concatStringsSep "/" (components path);
  under = dir: path: path == dir || builtins.substring 0 (builtins.stringLength dir + 1) path == dir + "/";
in
{
  inherit normalize;

  # The StateDirectory for a dataDir: "/var/lib/sluice/" -> "sluice",
  # "/var/lib/media/sluice" -> "media/sluice". null when dataDir names no
  # directory below /var/lib ("/var/lib/", "/srv/sluice", "/var/lib/../etc").
  stateDirectory = dataDir:
    let
      parts = components dataDir;
      rest = builtins.genList (i: builtins.elemAt parts (i + 2)) (builtins.length parts - 2);
    in
    if builtins.substring 0 1 dataDir != "/"
      || builtins.length parts < 3
      || builtins.elemAt parts 0 != "var"
      || builtins.elemAt parts 1 != "lib"
      || builtins.any (p: p == "." || p == "..") rest
    then null
    else builtins.concatStringsSep "/" rest;

  # Which sandbox setting of the unit would hide mediaDir from sluice:
  # "PrivateTmp" (a private /tmp and /var/tmp), "ProtectHome" (/home, /root
  # and /run/user made inaccessible), or null.
  mediaDirHiddenBy = mediaDir:
    let path = normalize mediaDir; in
    if under "/tmp" path || under "/var/tmp" path then "PrivateTmp"
    else if under "/home" path || under "/root" path || under "/run/user" path then "ProtectHome"
    else null;
}
