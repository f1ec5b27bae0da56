# Evaluates flake.nix's NixOS module for one services.sluice configuration,
# without nixpkgs: the few nixpkgs `lib` functions the module's `config` uses
# are given here with nixpkgs' meaning. Options are not evaluated, so their
# defaults come from `settings` below, as the module system would fill them.
#
#   nix-instantiate --store dummy:// --eval --strict --json \
#     -E '(import ./tests/packaging/nixos-module.nix) { dataDir = "/var/lib/sluice/"; }'
overrides:
let
  lib = {
    mkIf = cond: value: if cond then value else { };
    optional = cond: x: if cond then [ x ] else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    mapAttrs = builtins.mapAttrs;
    mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (builtins.attrNames attrs);
    filter = builtins.filter;
    attrNames = builtins.attrNames;
    elem = builtins.elem;
    isBool = builtins.isBool;
    boolToString = b: if b then "true" else "false";
    concatStringsSep = builtins.concatStringsSep;
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    removePrefix = prefix: s:
      if lib.hasPrefix prefix s
      then builtins.substring (builtins.stringLength prefix) (builtins.stringLength s) s
      else s;
    getExe = pkg: "${pkg}/bin/sluice";
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    importTOML = path: builtins.fromTOML (builtins.readFile path);
  };
  flake = import ../../flake.nix;
  outputs = flake.outputs { self = outputs; nixpkgs = { inherit lib; }; };
  cfg = {
    enable = true;
    package = "/nix/store/sluice";
    port = 3000;
    host = "127.0.0.1";
    dataDir = "/var/lib/sluice";
    mediaDir = null;
    supplementaryGroups = [ ];
    hardwareAcceleration = false;
    openFirewall = false;
    environmentFile = null;
    settings = { SHUTDOWN_GRACE = 10000; };
  } // overrides;
  config = (outputs.nixosModules.default {
    config.services.sluice = cfg;
    inherit lib;
    pkgs = { };
  }).config;
  service = config.systemd.services.sluice;
in
{
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  environment = service.environment;
  serviceConfig = {
    inherit (service.serviceConfig)
      StateDirectory WorkingDirectory SupplementaryGroups PrivateTmp ProtectHome;
  };
}
