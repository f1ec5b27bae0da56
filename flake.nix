{
  description = "sluice: in-process GStreamer transcoding server for IPTV and live previews";

  # nixos-unstable: Cargo.toml asks for rust-version 1.92, newer than the
  # rustc of the last stable NixOS release.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = lib.importTOML ./Cargo.toml;
      # The module's dataDir and mediaDir rules (builtins only, tested on their own).
      paths = import ./packaging/nixos-paths.nix;

      # GStreamer core and the plugin sets that provide every element in
      # REQUIRED_ELEMENTS (src/media/elements.rs): x264enc is in ugly,
      # avenc_aac/avdec_* in libav, h264parse/mpegtsmux/hlsdemux in bad.
      gstPlugins = pkgs: with pkgs.gst_all_1; [
        gstreamer
        gst-plugins-base
        gst-plugins-good
        gst-plugins-bad
        gst-plugins-ugly
        gst-libav
      ];
      gstPluginPath = pkgs: lib.makeSearchPathOutput "lib" "lib/gstreamer-1.0" (gstPlugins pkgs);
      # TLS for https:// and HLS sources (souphttpsrc goes through GIO).
      gioModules = pkgs: "${pkgs.glib-networking}/lib/gio/modules";

      sluiceFor = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "sluice";
        inherit (cargoToml.package) version;

        # Local state and build output never go into the store.
        src = lib.cleanSourceWith {
          src = lib.cleanSource ./.;
          filter = path: _type:
            !(dirOf path == toString ./. && lib.elem (baseNameOf path) [ "target" "data" "bench-results" ]);
        };
        cargoLock.lockFile = ./Cargo.lock;

        nativeBuildInputs = [ pkgs.pkg-config pkgs.makeWrapper ];
        buildInputs = gstPlugins pkgs ++ [ pkgs.glib ];

        # The test suite needs ffmpeg, a network-less loopback server and the
        # Debian tools of tests/packaging.rs: it runs under `make test`, and
        # checks.<system>.nixos below exercises this package as a service.
        doCheck = false;

        # The release profile's line tables and the local symbols (drop glue of
        # nested filter types has names of up to a megabyte) are stripped in
        # the fixup phase, as in the Dockerfile: about 9 MB instead of 360 MB.
        stripDebugFlags = [ "--strip-debug" "--discard-all" ];

        postInstall = ''
          install -Dm644 pipelines/profiles.toml "$out/share/sluice/profiles.toml"
          wrapProgram "$out/bin/sluice" \
            --prefix GST_PLUGIN_SYSTEM_PATH_1_0 : "${gstPluginPath pkgs}" \
            --prefix GIO_EXTRA_MODULES : "${gioModules pkgs}" \
            --set-default SLUICE_PROFILES "$out/share/sluice/profiles.toml"
        '';

        meta = {
          inherit (cargoToml.package) description;
          license = with lib.licenses; [ mit asl20 ];
          mainProgram = "sluice";
          platforms = lib.platforms.linux;
        };
      };
    in
    {
      packages = forAllSystems (pkgs: {
        default = sluiceFor pkgs;
        sluice = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      # `nix run` serves the offline demo catalog on http://127.0.0.1:3000/.
      # The catalog lives in ./data of the current directory (SLUICE_DATA_DIR).
      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          meta.description = "Serve sluice (demo catalog in ./data) on http://127.0.0.1:3000/";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            (lib.getBin pkgs.gst_all_1.gstreamer) # gst-inspect-1.0, gst-launch-1.0
            pkgs.ffmpeg # ffprobe and test media for the integration tests
            pkgs.curl
          ];
          GST_PLUGIN_SYSTEM_PATH_1_0 = gstPluginPath pkgs;
          GIO_EXTRA_MODULES = gioModules pkgs;
        };
      });

      nixosModules.default = { config, lib, pkgs, ... }:
        let
          cfg = config.services.sluice;
          # Variables (SPEC §3 and sluice's own) that `settings` may set.
          settingNames = [
            "SLUICE_PROFILES"
            "MAX_CONCURRENT_TRANSCODES"
            "MAX_CONCURRENT_REMUX"
            "MAX_QUEUED_REQUESTS"
            "MAX_SESSIONS_PER_CLIENT"
            "TRANSCODE_TIMEOUT"
            "TRANSCODE_QUALITY_PROFILE"
            "STALL_TIMEOUT"
            "MAX_CHANNELS"
            "MAX_VIEWERS"
            "CHANNEL_LINGER"
            "VIEWER_BUFFER"
            "RECONNECT_TIMEOUT"
            "MEMORY_WARNING_THRESHOLD"
            "MEMORY_CRITICAL_THRESHOLD"
            "CORS_ORIGIN"
            "TRUST_PROXY"
            "LOG_LEVEL"
            "LOG_FORMAT"
            "SHUTDOWN_GRACE"
            "RATE_LIMIT_PREVIEW"
            "RATE_LIMIT_ADMIN"
            "RATE_LIMIT_API"
            "HDHR_ENABLED"
            "HDHR_BASE_URL"
            "HDHR_QUALITY"
            "HDHR_SSDP"
            "EPG_URL"
            "EPG_REFRESH"
            "EPG_FILLER_HOURS"
            "SLUICE_ENCODER"
            "ENCODER_RETRY"
            "SNAPSHOT_TTL"
            "MAX_CONCURRENT_SNAPSHOTS"
          ];
          # SPEC §3 variables with an option of their own.
          ownOptions = {
            PORT = "services.sluice.port";
            HOST = "services.sluice.host";
            SLUICE_DATA_DIR = "services.sluice.dataDir";
            SLUICE_MEDIA_DIR = "services.sluice.mediaDir";
            ADMIN_API_KEY = "services.sluice.environmentFile (a setting would be world-readable in the Nix store)";
          };
          unknownSettings = lib.filter
            (name: !(lib.elem name settingNames) && !(ownOptions ? ${name}))
            (lib.attrNames cfg.settings);
          toEnv = value: if lib.isBool value then lib.boolToString value else toString value;
          stateDir = paths.stateDirectory cfg.dataDir;
          dataDir = if stateDir == null then cfg.dataDir else "/var/lib/${stateDir}";
          # The sandbox setting that would hide mediaDir is relaxed for it.
          mediaHiddenBy = if cfg.mediaDir == null then null else paths.mediaDirHiddenBy cfg.mediaDir;
          lowPort = cfg.port < 1024;
        in
        {
          options.services.sluice = {
            enable = lib.mkEnableOption "sluice, the in-process GStreamer live transcoding server";

            package = lib.mkOption {
              type = lib.types.package;
              default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
              defaultText = lib.literalExpression "sluice.packages.\${pkgs.stdenv.hostPlatform.system}.default";
              description = "The sluice package (its wrapper already points GStreamer at the plugins).";
            };

            port = lib.mkOption {
              type = lib.types.port;
              default = 3000;
              description = "TCP port to listen on (PORT).";
            };

            host = lib.mkOption {
              type = lib.types.str;
              default = "127.0.0.1";
              example = "0.0.0.0";
              description = "Address to listen on (HOST); 0.0.0.0 serves the whole network.";
            };

            dataDir = lib.mkOption {
              type = lib.types.str;
              default = "/var/lib/sluice";
              description = ''
                Catalog and state (SLUICE_DATA_DIR). Must name a directory below
                /var/lib (a trailing slash is fine): the unit runs as a DynamicUser
                and systemd creates it as its StateDirectory.
              '';
            };

            mediaDir = lib.mkOption {
              type = lib.types.nullOr lib.types.str;
              default = null;
              example = "/srv/media";
              description = ''
                The only directory file:// sources may read (SLUICE_MEDIA_DIR); null
                refuses file://. The service's dynamic user reads it through world
                permissions or a group in `supplementaryGroups`. Under /tmp or
                /var/tmp the unit runs without PrivateTmp, under /home, /root or
                /run/user with ProtectHome read-only (a warning says so for /tmp
                and /run/user); a directory such as /srv/media needs neither.
              '';
            };

            supplementaryGroups = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              example = [ "media" ];
              description = ''
                Extra groups of the service's dynamic user (SupplementaryGroups),
                e.g. a group that may read `mediaDir`, which otherwise must be
                world-readable.
              '';
            };

            hardwareAcceleration = lib.mkOption {
              type = lib.types.bool;
              default = false;
              description = ''
                Let sluice encode (and decode) on the GPU through VA-API: the
                service joins the `render` group and may open /dev/dri, and the
                Intel (iHD, i965) and AMD (Mesa) VA drivers are installed through
                `hardware.graphics`. sluice probes at start-up and falls back to
                x264 when nothing works (GET /api/encoders says why).
              '';
            };

            openFirewall = lib.mkOption {
              type = lib.types.bool;
              default = false;
              description = "Open `port` in the firewall (also set `host` to listen beyond loopback).";
            };

            environmentFile = lib.mkOption {
              type = lib.types.nullOr lib.types.path;
              default = null;
              example = "/run/secrets/sluice.env";
              description = ''
                File with `ADMIN_API_KEY=...` (and any other secret variables),
                read by systemd at start so the key never enters the Nix store.
              '';
            };

            settings = lib.mkOption {
              type = lib.types.submodule {
                freeformType = with lib.types; attrsOf (oneOf [ str int bool ]);
                options.SHUTDOWN_GRACE = lib.mkOption {
                  type = lib.types.ints.unsigned;
                  default = 10000;
                  description = "Milliseconds to drain sessions on stop; the unit's stop timeout is derived from it.";
                };
              };
              default = { };
              example = lib.literalExpression ''
                {
                  MAX_CONCURRENT_TRANSCODES = 2;
                  TRANSCODE_QUALITY_PROFILE = "low";
                  MEMORY_CRITICAL_THRESHOLD = "1GB";
                  LOG_FORMAT = "json";
                  TRUST_PROXY = true;
                }
              '';
              description = ''
                Environment variables of SPEC §3, passed to the service as they are
                (booleans as true/false): ${lib.concatStringsSep ", " settingNames}.
              '';
            };
          };

          config = lib.mkIf cfg.enable {
            assertions = [
              {
                assertion = stateDir != null;
                message = "services.sluice.dataDir must name a directory below /var/lib/ (DynamicUser with StateDirectory), such as /var/lib/sluice; got ${cfg.dataDir}.";
              }
              {
                assertion = unknownSettings == [ ];
                message = "services.sluice.settings: unknown variable(s) ${lib.concatStringsSep ", " unknownSettings}; accepted: ${lib.concatStringsSep ", " settingNames}.";
              }
            ] ++ lib.mapAttrsToList
              (name: instead: {
                assertion = !(cfg.settings ? ${name});
                message = "services.sluice.settings.${name}: use ${instead} instead.";
              })
              ownOptions;

            warnings =
              lib.optional (mediaHiddenBy == "PrivateTmp") ''
                services.sluice.mediaDir ${cfg.mediaDir} is under /tmp or /var/tmp, which
                PrivateTmp would hide from sluice: the unit runs without PrivateTmp.
                A directory such as /srv/media keeps the sandbox whole (and is not
                cleaned by systemd-tmpfiles).''
              ++ lib.optional (mediaHiddenBy == "ProtectHome" && lib.hasPrefix "/run/user" (paths.normalize cfg.mediaDir)) ''
                services.sluice.mediaDir ${cfg.mediaDir} is under /run/user, which
                ProtectHome would hide from sluice: the unit runs with ProtectHome
                read-only. /run/user/<uid> is a user's runtime directory (mode 0700,
                emptied at logout), which the service's dynamic user cannot read
                unless a group in supplementaryGroups or world permissions allow it.'';

            hardware.graphics = lib.mkIf cfg.hardwareAcceleration {
              enable = true;
              extraPackages = [ pkgs.intel-media-driver pkgs.intel-vaapi-driver ];
            };

            networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];
            # SSDP discovery (HDHR_SSDP): media servers search on UDP 1900.
            networking.firewall.allowedUDPPorts = lib.mkIf
              (cfg.openFirewall && lib.elem (toString (cfg.settings.HDHR_SSDP or false)) [ "1" "true" ]) [ 1900 ];

            systemd.services.sluice = {
              description = "sluice live transcoding server";
              wantedBy = [ "multi-user.target" ];
              wants = [ "network-online.target" ];
              after = [ "network-online.target" ];

              environment = {
                PORT = toString cfg.port;
                HOST = cfg.host;
                SLUICE_DATA_DIR = dataDir;
                # GStreamer's plugin registry cache (CacheDirectory below).
                XDG_CACHE_HOME = "/var/cache/sluice";
              }
              // lib.optionalAttrs (cfg.mediaDir != null) { SLUICE_MEDIA_DIR = cfg.mediaDir; }
              # Where hardware.graphics puts the VA drivers.
              // lib.optionalAttrs cfg.hardwareAcceleration { LIBVA_DRIVERS_PATH = "/run/opengl-driver/lib/dri"; }
              // lib.mapAttrs (_: toEnv) cfg.settings;

              serviceConfig = {
                ExecStart = lib.getExe cfg.package;
                EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
                Restart = "on-failure";
                RestartSec = 5;
                # SIGTERM drains for SHUTDOWN_GRACE; give it that plus a margin.
                TimeoutStopSec = cfg.settings.SHUTDOWN_GRACE / 1000 + 15;

                DynamicUser = true;
                StateDirectory = if stateDir == null then "sluice" else stateDir;
                StateDirectoryMode = "0700";
                CacheDirectory = "sluice";
                WorkingDirectory = dataDir;
                SupplementaryGroups = cfg.supplementaryGroups
                  ++ lib.optional cfg.hardwareAcceleration "render";
                UMask = "0077";

                NoNewPrivileges = true;
                ProtectSystem = "strict";
                ProtectHome = if mediaHiddenBy == "ProtectHome" then "read-only" else true;
                PrivateTmp = mediaHiddenBy != "PrivateTmp";
                # /dev/dri (the GPU's render nodes) only with hardwareAcceleration.
                PrivateDevices = !cfg.hardwareAcceleration;
                DeviceAllow = lib.mkIf cfg.hardwareAcceleration [ "char-drm rw" ];
                ProtectKernelTunables = true;
                ProtectKernelModules = true;
                ProtectKernelLogs = true;
                ProtectControlGroups = true;
                ProtectClock = true;
                ProtectHostname = true;
                ProtectProc = "invisible";
                RestrictNamespaces = true;
                RestrictRealtime = true;
                RestrictSUIDSGID = true;
                LockPersonality = true;
                RemoveIPC = true;
                # AF_NETLINK: GIO's network monitor, used by souphttpsrc.
                RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
                SystemCallArchitectures = "native";
                SystemCallFilter = [ "@system-service" "~@privileged" ];
                CapabilityBoundingSet = if lowPort then "CAP_NET_BIND_SERVICE" else "";
                AmbientCapabilities = lib.mkIf lowPort "CAP_NET_BIND_SERVICE";
                # MemoryDenyWriteExecute is left off on purpose: ORC, which
                # GStreamer's converters and scalers use, JIT-compiles its
                # inner loops into writable+executable memory.
              };
            };
          };
        };

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;

        # The module on a VM: the hardened unit starts, every required
        # GStreamer element loads (/ready), and a real transcode produces fMP4.
        nixos = pkgs.testers.runNixOSTest {
          name = "sluice";
          nodes.machine = { pkgs, ... }: {
            imports = [ self.nixosModules.default ];
            services.sluice.enable = true;
            environment.systemPackages = [ pkgs.curl ];
            virtualisation.memorySize = 2048;
            virtualisation.cores = 2;
          };
          testScript = ''
            machine.wait_for_unit("sluice.service")
            machine.wait_for_open_port(3000)
            machine.succeed("curl -fsS http://127.0.0.1:3000/live")
            machine.wait_until_succeeds("curl -fsS http://127.0.0.1:3000/ready", timeout=60)
            machine.succeed("test -s /var/lib/sluice/streams.json")
            # A live source never ends: curl stops after 30 s (exit 28).
            machine.succeed(
                "curl -sS --max-time 30 -o /tmp/preview.mp4 "
                "'http://127.0.0.1:3000/streams/preview/demo-smpte?quality=low' || [ $? -eq 28 ]"
            )
            machine.succeed("[ $(stat -c %s /tmp/preview.mp4) -gt 10000 ]")
            machine.succeed("head -c 16 /tmp/preview.mp4 | grep -q ftyp")
            machine.succeed("systemctl stop sluice.service")
            machine.succeed("test -s /var/lib/sluice/streams.json")
          '';
        };
      });
    };
}
