//! remotecommand over SPDY/3.1: the client opens one stream per channel, typed by its
//! `streamType` header; the server answers each, joins them to the session and writes
//! the status on the error stream at the end.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::backend::{AttachTarget, ExecTarget, Session};
use super::remotecommand::{self, Failure, Input, Kind, Outcome, ResizeDecoder, Version};
use super::server::Shared;

/// How long the client gets to read the status and close before the server does.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Client input queued before reading the client stops.
const INPUT_QUEUE: usize = 16;
/// Bytes read from a client stream at once.
const READ_CHUNK: usize = 32 * 1024;

type Half<T> = (ReadHalf<T>, WriteHalf<T>);

/// The streams of one session, as the client opened them.
#[derive(Default)]
struct Streams {
    error: Option<spdy::Stream>,
    stdin: Option<spdy::Stream>,
    stdout: Option<spdy::Stream>,
    stderr: Option<spdy::Stream>,
    resize: Option<spdy::Stream>,
}

/// Which streams the session needs before it starts.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
}

impl Streams {
    fn complete(&self, w: Wanted) -> bool {
        self.error.is_some()
            && (!w.stdin || self.stdin.is_some())
            && (!w.stdout || self.stdout.is_some())
            && (!w.stderr || self.stderr.is_some())
            && (!w.resize || self.resize.is_some())
    }

    /// Files a new stream under its type; `false` when the type is unknown or taken.
    fn file(&mut self, stream: spdy::Stream) -> Result<(), spdy::Stream> {
        let slot = match stream
            .header("streamtype")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            _ => return Err(stream),
        };
        if slot.is_some() {
            return Err(stream);
        }
        *slot = Some(stream);
        Ok(())
    }
}

/// Serves an exec over an upgraded connection.
pub async fn serve_exec<T>(io: T, version: Version, target: ExecTarget, shared: &Shared)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wanted = Wanted {
        stdin: target.stdin,
        stdout: target.stdout,
        stderr: target.stderr && !target.tty,
        resize: target.tty && version.has_resize(),
    };
    let kind = Kind::Exec(target.cmd.clone());
    let backend = std::sync::Arc::clone(&shared.backend);
    serve(io, version, wanted, kind, shared, async move {
        backend.exec(&target).await
    })
    .await;
}

/// Serves an attach over an upgraded connection.
pub async fn serve_attach<T>(io: T, version: Version, target: AttachTarget, shared: &Shared)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wanted = Wanted {
        stdin: target.stdin,
        stdout: target.stdout,
        stderr: target.stderr && !target.tty,
        resize: target.tty && version.has_resize(),
    };
    let backend = std::sync::Arc::clone(&shared.backend);
    serve(io, version, wanted, Kind::Attach, shared, async move {
        backend.attach(&target).await
    })
    .await;
}

async fn serve<T>(
    io: T,
    version: Version,
    wanted: Wanted,
    kind: Kind,
    shared: &Shared,
    session: impl Future<Output = Result<Session, String>>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (conn, mut incoming) = spdy::server(io, spdy::Config::default());
    let mut streams = Streams::default();
    let collected = tokio::time::timeout(shared.stream_creation_timeout, async {
        while !streams.complete(wanted) {
            let mut stream = incoming.accept().await?;
            if stream.reply(Vec::new(), false).await.is_err() {
                return None;
            }
            if let Err(mut extra) = streams.file(stream) {
                tracing::debug!(
                    stream_type = extra.header("streamtype").unwrap_or(""),
                    "unexpected stream reset"
                );
                extra.reset(spdy::RstStatus::ProtocolError);
            }
        }
        Some(())
    })
    .await;
    if !matches!(collected, Ok(Some(()))) {
        tracing::debug!("client did not open its streams in time; closing");
        return;
    }
    // Streams opened from now on have no place: refuse them.
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Some(mut extra) = incoming.accept().await {
            extra.reset(spdy::RstStatus::ProtocolError);
        }
    });
    {
        let conn = conn.clone();
        let tx = input_tx.clone();
        tasks.spawn(async move {
            conn.closed().await;
            let _ = tx.send(Input::Gone).await;
        });
    }
    let Streams {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    } = streams;
    let Some(mut error) = error else { return };
    let session = match session.await {
        Ok(s) => s,
        Err(e) => {
            // client-go waits for stdout and stderr to end as well as for the status.
            for s in [stdout, stderr].into_iter().flatten() {
                let (_r, mut w) = tokio::io::split(s);
                let _ = w.shutdown().await;
            }
            let status = remotecommand::status_bytes(version, &Err(Failure::Internal(e)));
            let _ = error.write_all(&status).await;
            let _ = error.shutdown().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
            return;
        }
    };
    if let Some(s) = stdin {
        tasks.spawn(pump_stdin(s, input_tx.clone()));
    }
    if let Some(s) = resize {
        tasks.spawn(pump_resize(s, input_tx.clone()));
    }
    drop(input_tx);
    let mut sink = StreamSink {
        stdout: stdout.map(tokio::io::split),
        stderr: stderr.map(tokio::io::split),
    };
    let outcome = remotecommand::run(session, &kind, input_rx, &mut sink).await;
    if let Outcome::Done(result) = outcome {
        for (_, w) in [sink.stdout.as_mut(), sink.stderr.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = w.shutdown().await;
        }
        let status = remotecommand::status_bytes(version, &result);
        if !status.is_empty() {
            let _ = error.write_all(&status).await;
        }
        let _ = error.shutdown().await;
        // The client closes once it has read everything; do not cut it short.
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
    }
    tasks.abort_all();
    conn.goaway().await;
}

async fn pump_stdin(stream: spdy::Stream, tx: mpsc::Sender<Input>) {
    let (mut r, _w) = tokio::io::split(stream);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Input::StdinEof).await;
                return;
            }
            Ok(n) => {
                if tx.send(Input::Stdin(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn pump_resize(stream: spdy::Stream, tx: mpsc::Sender<Input>) {
    let (mut r, _w) = tokio::io::split(stream);
    let mut decoder = ResizeDecoder::default();
    let mut buf = vec![0u8; 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match decoder.push(&buf[..n]) {
            Ok(sizes) => {
                for (width, height) in sizes {
                    if tx.send(Input::Resize { width, height }).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "resize stream dropped");
                return;
            }
        }
    }
}

struct StreamSink {
    stdout: Option<Half<spdy::Stream>>,
    stderr: Option<Half<spdy::Stream>>,
}

#[tonic::async_trait]
impl remotecommand::Sink for StreamSink {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.stdout {
            Some((_, w)) => w.write_all(data).await,
            None => Ok(()),
        }
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.stderr {
            Some((_, w)) => w.write_all(data).await,
            None => Ok(()),
        }
    }
}
