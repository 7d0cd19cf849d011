//! berthd: the berth CRI runtime daemon. kubelet and crictl talk CRI v1 gRPC to it over a
//! unix socket.

mod authority;
mod deadline;
mod events;
mod image;
mod lists;
mod metrics;
mod runtime;
mod socket;
mod status;
mod streaming;
mod work;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_cri::v1 as cri;
use clap::Parser;
use runtime_core::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};
use runtime_core::image::{ImageService, ImageServiceOptions};
use tokio::signal::unix::{SignalKind, signal};

/// How long in-flight RPCs may run after SIGTERM / SIGINT before they are cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Largest gRPC message accepted or sent, as kubelet and containerd use.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// berth: a Kubernetes CRI runtime. Serves CRI v1 (RuntimeService, ImageService) on a unix
/// socket for kubelet and crictl.
#[derive(Debug, Parser)]
#[command(name = "berthd", version, about, long_about = None)]
struct Args {
    /// Configuration file (TOML). A missing file at the default path means built-in
    /// defaults; a missing file named here is an error.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Persistent root directory: images, layers, metadata [default: /var/lib/berth]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Runtime state directory: socket, namespaces, bundles [default: /run/berth]
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// CRI socket path [default: <state>/berth.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace, or a tracing filter [default: info]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    metrics_address: Option<String>,
    /// Print a commented default berth.toml and exit.
    #[arg(long)]
    print_default_config: bool,
}

impl Args {
    /// The configuration in effect: the file, then flags over it.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(p) => Config::load(p, true)?,
            None => Config::load(std::path::Path::new(DEFAULT_CONFIG_PATH), false)?,
        };
        if let Some(r) = &self.root {
            config.root = r.clone();
        }
        if let Some(s) = &self.state {
            config.state = s.clone();
        }
        if let Some(s) = &self.socket {
            config.socket = Some(s.clone());
        }
        if let Some(l) = &self.log_level {
            config.log_level = l.clone();
        }
        if let Some(f) = &self.log_format {
            config.log_format = if f == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
        }
        if let Some(m) = &self.metrics_address {
            config.metrics_address = Some(m.clone()).filter(|m| !m.is_empty());
        }
        config.validate("command line")?;
        Ok(config)
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log level {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", Config::default_toml());
        return std::process::ExitCode::SUCCESS;
    }
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("berthd: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: start async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let pods = std::sync::OnceLock::new();
    let result = rt.block_on(run(config, &pods));
    // Blocking work still running (an unpack, a runtime call) gets a bounded time to end,
    // so that a stuck one cannot keep berthd from exiting.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    // Then the records written last (by that work too) reach the disk.
    if let Some(pods) = pods.get()
        && !pods.flush_records(SHUTDOWN_GRACE)
    {
        tracing::warn!("records written last may not be on disk yet");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("berthd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    pods_slot: &std::sync::OnceLock<runtime_core::pods::PodService>,
) -> anyhow::Result<()> {
    runtime_core::fsutil::create_private_dir(&config.root)?;
    runtime_core::fsutil::create_private_dir(&config.state)?;
    let images = ImageService::open(ImageServiceOptions {
        root: config.root.clone(),
        registries_config: config.image.registries_config.clone(),
        max_concurrent_downloads: config.image.max_concurrent_downloads,
        connect_timeout: Duration::from_secs(config.image.connect_timeout_secs),
        read_timeout: Duration::from_secs(config.image.read_timeout_secs),
    })?;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
    let pods = runtime_core::pods::PodService::open(
        runtime_core::pods::PodServiceOptions::from_config(&config, &exe_dir)?,
        images.clone(),
    )
    .await?;
    let _ = pods_slot.set(pods.clone());
    let metrics = Arc::new(metrics::Metrics::new());
    metrics.watch_pods(pods.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    };

    let metrics_task = match &config.metrics_address {
        Some(addr) => {
            let listener = metrics::bind(addr).await.map_err(anyhow::Error::msg)?;
            let local = listener.local_addr().context("metrics listener address")?;
            let served = Arc::clone(&metrics);
            let stop = wait_stop();
            tracing::info!(addr = %local, "serving metrics at /metrics");
            Some(tokio::spawn(async move {
                if let Err(e) = metrics::serve(listener, served, stop).await {
                    tracing::error!(addr = %local, error = %e, "metrics server failed");
                }
            }))
        }
        None => None,
    };

    let socket_path = config.socket_path();
    let listener = socket::bind(&socket_path)?;
    let config_json = serde_json::to_string(&config).unwrap_or_default();
    let work = work::Work::new(tokio::runtime::Handle::current());
    let streaming = streaming::start(
        &config.streaming,
        Arc::new(streaming::PodBackend::new(pods.clone())),
        wait_stop(),
    )
    .await?;
    let runtime_api = runtime::RuntimeApi::new(config_json, pods.clone(), work.clone(), streaming);
    let image_api = image::ImageApi::new(images, pods.clone(), Arc::clone(&metrics), work);
    let runtime_server = cri::runtime_service_server::RuntimeServiceServer::new(runtime_api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let image_server = cri::image_service_server::ImageServiceServer::new(image_api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // When the stop signal comes, tonic stops accepting, asks every connection to finish its
    // calls (GOAWAY) and returns once they have closed.
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(metrics::MetricsLayer::new(Arc::clone(&metrics)))
            .layer(deadline::DeadlineLayer)
            .add_service(runtime_server)
            .add_service(image_server)
            .serve_with_incoming_shutdown(accepted(listener), wait_stop()),
    );
    let server_exit =
        |r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>| match r {
            Ok(r) => r.context("gRPC server failed"),
            Err(e) => Err(anyhow::anyhow!("the gRPC server task failed: {e}")),
        };

    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tracing::info!(socket = %socket_path.display(), root = %config.root.display(), state = %config.state.display(), "berthd serving CRI");

    let finished = tokio::select! {
        r = &mut server => Some(server_exit(r)),
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); None }
    };
    let _ = stop_tx.send(true);
    let result = match finished {
        Some(r) => r,
        // Let in-flight RPCs finish; past the grace period they are cancelled (the
        // connections' tasks are dropped with the runtime, see main).
        None => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(r) => server_exit(r),
            Err(_) => {
                server.abort();
                tracing::warn!("in-flight requests cancelled after {SHUTDOWN_GRACE:?}");
                Ok(())
            }
        },
    };
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }

    if let Err(e) = std::fs::remove_file(&socket_path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %socket_path.display(), error = %e, "could not remove socket");
    }
    tracing::info!("berthd stopped");
    result
}

/// The connections accepted on the CRI socket, each with the `:authority` fix of old
/// clients (see `authority`). An accept that fails (out of file descriptors and the like)
/// is logged and retried after a pause; the listener stays usable, and the stream never
/// yields an error.
fn accepted(
    listener: tokio::net::UnixListener,
) -> impl futures_util::Stream<Item = std::io::Result<authority::AuthorityFix<tokio::net::UnixStream>>>
+ Send
+ 'static {
    futures_util::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    return Some((Ok(authority::AuthorityFix::new(stream)), listener));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a CRI connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}
