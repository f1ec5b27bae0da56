//! sluice: live previews of IPTV and other sources, transcoded in-process by
//! GStreamer pipelines and served over HTTP.
//!
//! Request flow: HTTP request ([`http`]) -> catalog lookup ([`catalog`]) ->
//! admission ([`pool`], [`memory`], [`providers`]) -> pipeline ([`media`]) -> response body.
//! [`preview`] ties the steps together; [`sessions`] tracks what runs;
//! [`shutdown`] drains it all.

pub mod admission;
pub mod catalog;
pub mod channels;
pub mod config;
pub mod durable;
pub mod encoders;
pub mod epg;
pub mod events;
pub mod health;
pub mod hls;
pub mod http;
pub mod logging;
pub mod m3u;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod pool;
pub mod preview;
pub mod profiles;
pub mod providers;
pub mod redact;
pub mod sessions;
pub mod shutdown;
pub mod snapshot;
pub mod tuner;

use std::net::SocketAddr;
use std::sync::Arc;

use config::Settings;

/// Everything a request handler may read: settings and running state.
pub struct AppState {
    pub settings: Settings,
    pub profiles: profiles::Profiles,
    pub catalog: catalog::Catalog,
    /// Upstream accounts and the connections open to each.
    pub providers: providers::Providers,
    /// The XMLTV guide; its refresher starts with the server.
    pub guide: Arc<epg::Guide>,
    pub pool: Arc<pool::Pool>,
    /// Measured CPU headroom and encoder costs (admission under `auto`,
    /// shown in status and metrics in every mode).
    pub headroom: Arc<admission::Headroom>,
    pub registry: Arc<sessions::Registry>,
    pub channels: Arc<channels::Channels>,
    pub memory: Arc<memory::MemoryMonitor>,
    pub shutdown: Arc<shutdown::Shutdown>,
    pub health: Arc<health::HealthCache>,
    pub metrics: metrics::Metrics,
    /// Channel snapshots: their cache and capture slots.
    pub snapshots: Arc<snapshot::Snapshots>,
    /// The HDHomeRun tuner identity; `None` when `HDHR_ENABLED=false`.
    pub tuner: Option<tuner::Identity>,
    /// HLS segment windows and sessions.
    pub hls: Arc<hls::Hls>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Profiles(#[from] profiles::ProfilesError),
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::CatalogError),
    #[error("GStreamer could not be initialised: {0}")]
    Gstreamer(#[from] gst::glib::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Builds the state from settings: GStreamer, profiles, catalog, pool.
/// Must be called inside a tokio runtime (it starts background samplers).
pub fn build_state(settings: Settings) -> Result<Arc<AppState>, StartError> {
    settings.validate().map_err(StartError::Config)?;
    media::init()?;
    media::elements::preload();
    let mut profiles = profiles::Profiles::load(&settings.profiles)?;
    encoders::configure(&settings.encoder, settings.encoder_retry(), &mut profiles)
        .map_err(StartError::Config)?;
    if profiles.get(&settings.default_quality).is_none() {
        return Err(StartError::Config(format!(
            "TRANSCODE_QUALITY_PROFILE: no profile named '{}' (available: {})",
            settings.default_quality,
            profiles.names().join(", ")
        )));
    }
    if let Some(q) = &settings.hdhr_quality {
        if profiles.get(q).is_none() {
            return Err(StartError::Config(format!(
                "HDHR_QUALITY: no profile named '{q}' (available: {})",
                profiles.names().join(", ")
            )));
        }
    }
    if let Some(dir) = &settings.media_dir {
        if !dir.is_dir() {
            return Err(StartError::Config(format!(
                "SLUICE_MEDIA_DIR: '{}' is not a directory",
                dir.display()
            )));
        }
    }
    let (catalog, opened) = catalog::Catalog::open(&settings.data_dir, settings.media_dir.clone())?;
    match opened {
        catalog::Opened::Loaded(n) => {
            tracing::info!(streams = n, path = %catalog.path().display(), "catalog loaded")
        }
        catalog::Opened::CreatedDemo(n) => {
            tracing::info!(streams = n, path = %catalog.path().display(), "no catalog found: created the offline demo catalog")
        }
        catalog::Opened::MovedCorrupt(aside, reason) => tracing::error!(
            moved_to = %aside.display(), reason = %reason,
            "catalog was corrupt: moved it aside and started with an empty catalog"
        ),
    }
    let providers = providers::Providers::open(&settings.data_dir).map_err(|e| {
        StartError::Config(format!(
            "the providers could not be read from {}: {e}",
            settings.data_dir.display()
        ))
    })?;
    let tuner = if settings.hdhr_enabled {
        let id = tuner::Identity::load_or_create(&settings.data_dir).map_err(|e| {
            StartError::Config(format!(
                "the HDHomeRun identity could not be stored in {}: {e}",
                settings.data_dir.display()
            ))
        })?;
        tracing::info!(device_id = %id.device_id, "HDHomeRun tuner emulation on");
        Some(id)
    } else {
        None
    };
    let headroom = {
        let estimates = profiles
            .all()
            .iter()
            .map(|p| (p.name.clone(), admission::builtin_cost(p)))
            .collect();
        admission::Headroom::new(
            admission::cpu::available_cores(),
            &settings.default_quality,
            estimates,
        )
    };
    /// Encoders per core `auto` never goes past, whatever it measures.
    const AUTO_ENCODERS_PER_CORE: usize = 16;
    let (max_transcodes, gate) = match settings.max_transcodes {
        config::TranscodeLimit::Max(n) => (n, None),
        // A ceiling far above what the headroom will allow (the cheapest
        // profile costs a fifth of a core or more), so a wrong measurement
        // can never start encoders without bound.
        config::TranscodeLimit::Auto => (
            (headroom.cores().ceil() as usize * AUTO_ENCODERS_PER_CORE).max(AUTO_ENCODERS_PER_CORE),
            Some(headroom.clone()),
        ),
    };
    let pool = pool::Pool::with_headroom(
        pool::Limits {
            transcodes: max_transcodes,
            remux: settings.max_remux,
            queued: settings.max_queued,
            per_client: settings.max_sessions_per_client,
            channels: settings.max_channels,
            viewers: settings.max_viewers,
        },
        gate,
    );
    let registry = sessions::Registry::new();
    let channels = channels::Channels::new(
        pool.clone(),
        registry.events().clone(),
        channels::ChannelSettings {
            linger: settings.channel_linger(),
            viewer_buffer: settings.viewer_buffer(),
            stall: settings.stall_timeout(),
        },
    );
    channels.spawn_watchdog();
    channels::spawn_sampler(headroom.clone(), channels.clone(), pool.clone());
    let memory = memory::MemoryMonitor::new(settings.memory_warning, settings.memory_critical);
    memory.spawn_sampler();
    channels
        .stats()
        .set_dot_dump_dir(Some(settings.data_dir.join("pipeline-dumps")));
    let health = health::HealthCache::new(&settings.data_dir);
    health.spawn_refresher(settings.data_dir.clone());
    let guide = Arc::new(epg::Guide::open(
        &settings.data_dir,
        settings.epg_url.clone(),
        settings.epg_refresh,
        settings.epg_filler_hours,
    ));
    let missing = health.checks().missing_elements;
    if !missing.is_empty() {
        tracing::error!(missing = %missing.join(", "), "GStreamer elements are missing: install the plugins listed in README");
    }
    let snapshots = snapshot::Snapshots::new(settings.snapshot_ttl(), settings.max_snapshots);
    Ok(Arc::new(AppState {
        settings,
        profiles,
        catalog,
        providers,
        guide,
        pool,
        headroom,
        registry,
        channels,
        memory,
        shutdown: shutdown::Shutdown::new(),
        health,
        metrics: metrics::Metrics::default(),
        snapshots,
        tuner,
        hls: hls::Hls::new(),
    }))
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    serving: tokio::task::JoinHandle<()>,
    /// SSDP announcements of the tuner (`HDHR_SSDP`).
    ssdp: Option<tuner::ssdp::Announcer>,
}

impl Server {
    /// Binds `HOST:PORT` (port 0 picks a free port) and starts serving.
    pub async fn start(settings: Settings) -> Result<Server, StartError> {
        let addr = SocketAddr::new(settings.host, settings.port);
        // The encoder probe (up to 5 s) runs once, off the async runtime.
        let _ = tokio::task::spawn_blocking(|| {
            if media::init().is_ok() {
                encoders::table();
            }
        })
        .await;
        let state = build_state(settings)?;
        epg::spawn(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        if state.settings.admin_api_key.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "listening beyond loopback without ADMIN_API_KEY: catalog changes are accepted only from loopback clients that come through no proxy; set one (for example ADMIN_API_KEY=$(openssl rand -hex 24)) and send it as X-Admin-Key");
        }
        if let config::TrustProxy::Hops(hops) = state.settings.trust_proxy {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, hops, "TRUST_PROXY trusts hops whatever their address while sluice is reachable beyond loopback: a client that connects directly can claim any IP; list the proxy addresses instead (TRUST_PROXY=10.0.0.0/8,127.0.0.1)");
            }
        }
        let filter = http::routes(state.clone());
        let stop_state = state.clone();
        let serving = tokio::spawn(http::serve(listener, filter, async move {
            stop_state.shutdown.wait().await
        }));
        let ssdp = match (&state.tuner, state.settings.hdhr_ssdp) {
            (Some(id), true) => {
                let announce = tuner::ssdp::Announce {
                    device_id: id.device_id.clone(),
                    base_url: state.settings.hdhr_base_url.clone(),
                    addr,
                };
                match tuner::ssdp::Announcer::start(announce) {
                    Ok(a) => {
                        tracing::info!("HDHomeRun tuner announced by SSDP on 239.255.255.250:1900");
                        Some(a)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SSDP announcements could not start (the tuner can still be added by its address)");
                        None
                    }
                }
            }
            _ => None,
        };
        tracing::info!(%addr, "sluice listening");
        Ok(Server {
            addr,
            state,
            serving,
            ssdp,
        })
    }

    /// Graceful shutdown: stop accepting, flush the catalog, drain sessions.
    pub async fn shutdown(self) {
        if let Some(ssdp) = self.ssdp {
            ssdp.stop().await;
        }
        shutdown::run(&self.state, self.serving).await;
    }
}

/// Sets up logging as configured (`LOG_LEVEL`, `LOG_FORMAT`).
pub fn init_logging(settings: &Settings) {
    logging::init(settings);
}

/// Runs the server until SIGTERM/SIGINT, then shuts down gracefully; a
/// second signal exits at once.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    let server = Server::start(settings).await?;
    wait_for_signal().await;
    tracing::info!("shutdown signal received: draining (send the signal again to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
    shutdown::exit_at(server.state.settings.shutdown_grace());
    server.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
