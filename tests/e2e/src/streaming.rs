//! A streaming client of the harness's own, as kubelet, crictl and client-go speak to a
//! runtime's streaming server: remotecommand (exec, attach) over SPDY/3.1 or WebSocket
//! channels, and port-forward over SPDY/3.1, bare or tunnelled in WebSocket. It uses the
//! project's `spdy` crate and tokio-tungstenite, and the wire formats of client-go.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How the client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// An HTTP upgrade to SPDY/3.1 (kubelet, crictl's default).
    Spdy,
    /// A WebSocket upgrade (crictl --transport websocket, client-go's WebSocket executor).
    WebSocket,
}

/// The streams a remotecommand session asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioOpts {
    /// Send stdin.
    pub stdin: bool,
    /// Receive stdout.
    pub stdout: bool,
    /// Receive stderr (not with a TTY).
    pub stderr: bool,
    /// A terminal: adds the resize stream.
    pub tty: bool,
}

/// What the client saw of a remotecommand session.
#[derive(Debug, Default, Clone)]
pub struct StreamOutput {
    /// Everything received on stdout.
    pub stdout: Vec<u8>,
    /// Everything received on stderr.
    pub stderr: Vec<u8>,
    /// The error stream's bytes (a metav1.Status as JSON with v4 and later).
    pub status: Vec<u8>,
    /// The protocol the server chose.
    pub protocol: String,
}

impl StreamOutput {
    /// The status as JSON.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.status).ok()
    }

    /// 0 for a Success status, the code of a NonZeroExitCode failure, `None` otherwise.
    pub fn exit_code(&self) -> Option<i32> {
        let v = self.status_json()?;
        match v["status"].as_str()? {
            "Success" => Some(0),
            _ if v["reason"] == "NonZeroExitCode" => v["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
            _ => None,
        }
    }

    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Status(Vec<u8>),
    End,
}

enum Command {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
}

/// An open remotecommand session.
pub struct Session {
    events: mpsc::Receiver<Event>,
    commands: Option<mpsc::Sender<Command>>,
    out: StreamOutput,
    ended: bool,
}

/// Splits `http://host:port/path` into the address and the path.
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("streaming URL {url:?} is not an absolute http:// URL"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Ok((rest[..slash].to_string(), rest[slash..].to_string()))
}

/// Sends a plain request (no upgrade) and returns the status code: what a client with a
/// bad token or no upgrade sees.
pub async fn http_status(url: &str, method: &str, extra_headers: &[(&str, &str)]) -> Result<u16> {
    let (addr, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let (status, _) = read_response_head(&mut tcp).await?;
    Ok(status)
}

/// Reads an HTTP/1.1 response head byte by byte (nothing after it is consumed).
async fn read_response_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u16, String)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
        let b = r.read_u8().await.context("read the response head")?;
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {text:?}"))?;
    Ok((status, text))
}

/// The value of a response header (case-insensitive name).
fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Upgrades to SPDY/3.1 offering `protocols`; returns the connection and the chosen one.
pub async fn spdy_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(spdy::Connection, spdy::Incoming, String)> {
    let (addr, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let (status, head) = read_response_head(&mut tcp).await?;
    if status != 101 {
        bail!("SPDY upgrade refused with {status}: {head}");
    }
    let chosen = head_header(&head, "x-stream-protocol-version").unwrap_or_default();
    let (conn, incoming) = spdy::client(tcp, spdy::Config::default());
    Ok((conn, incoming, chosen))
}

/// Opens a WebSocket offering `protocols`; returns it and the chosen subprotocol.
pub async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(tokio_tungstenite::WebSocketStream<TcpStream>, String)> {
    let (addr, path) = split_url(url)?;
    let tcp = TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .context("websocket handshake")?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, chosen))
}

impl Session {
    /// Opens a session: SPDY offers v4 down to v1, WebSocket offers v5 only (as
    /// client-go's WebSocket executor).
    pub async fn open(url: &str, transport: Transport, opts: StdioOpts) -> Result<Session> {
        match transport {
            Transport::Spdy => {
                Self::open_spdy(
                    url,
                    opts,
                    &[
                        "v4.channel.k8s.io",
                        "v3.channel.k8s.io",
                        "v2.channel.k8s.io",
                        "channel.k8s.io",
                    ],
                )
                .await
            }
            Transport::WebSocket => Self::open_ws(url, opts, &["v5.channel.k8s.io"]).await,
        }
    }

    /// Opens a SPDY session offering exactly `protocols`.
    pub async fn open_spdy(url: &str, opts: StdioOpts, protocols: &[&str]) -> Result<Session> {
        let (conn, _incoming, chosen) = spdy_connect(url, protocols).await?;
        let open = |kind: &'static str| {
            let conn = conn.clone();
            async move {
                let mut s = conn
                    .open(vec![("streamtype".to_string(), kind.to_string())], false)
                    .await
                    .with_context(|| format!("open the {kind} stream"))?;
                s.wait_reply()
                    .await
                    .with_context(|| format!("reply to the {kind} stream"))?;
                anyhow::Ok(s)
            }
        };
        let error = open("error").await?;
        let stdin = if opts.stdin {
            Some(open("stdin").await?)
        } else {
            None
        };
        let stdout = if opts.stdout {
            Some(open("stdout").await?)
        } else {
            None
        };
        let stderr = if opts.stderr && !opts.tty {
            Some(open("stderr").await?)
        } else {
            None
        };
        let resize = if opts.tty && chosen != "v2.channel.k8s.io" && chosen != "channel.k8s.io" {
            Some(open("resize").await?)
        } else {
            None
        };
        let (ev_tx, events) = mpsc::channel(64);
        let (cmd_tx, mut commands) = mpsc::channel::<Command>(64);
        tokio::spawn(async move {
            let _conn = conn;
            let mut readers = tokio::task::JoinSet::new();
            let (mut er, mut ew) = tokio::io::split(error);
            let _ = ew.shutdown().await;
            let tx = ev_tx.clone();
            readers.spawn(async move {
                let mut buf = Vec::new();
                let _ = er.read_to_end(&mut buf).await;
                let _ = tx.send(Event::Status(buf)).await;
            });
            for (s, stdout) in [(stdout, true), (stderr, false)] {
                let Some(s) = s else { continue };
                let tx = ev_tx.clone();
                readers.spawn(async move {
                    let (mut r, mut w) = tokio::io::split(s);
                    let _ = w.shutdown().await;
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let d = buf[..n].to_vec();
                        let _ = tx
                            .send(if stdout {
                                Event::Stdout(d)
                            } else {
                                Event::Stderr(d)
                            })
                            .await;
                    }
                });
            }
            let mut stdin = stdin.map(tokio::io::split);
            let mut resize = resize.map(tokio::io::split);
            loop {
                tokio::select! {
                    c = commands.recv() => match c {
                        Some(Command::Stdin(d)) => if let Some((_, w)) = stdin.as_mut() { let _ = w.write_all(&d).await; },
                        Some(Command::CloseStdin) => if let Some((_, w)) = stdin.as_mut() { let _ = w.shutdown().await; },
                        Some(Command::Resize(w, h)) => if let Some((_, s)) = resize.as_mut() {
                            let _ = s.write_all(format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes()).await;
                        },
                        None => {
                            // The client went away: cut everything, as a dropped
                            // connection would.
                            readers.abort_all();
                            return;
                        }
                    },
                    r = readers.join_next() => if r.is_none() { break },
                }
            }
            while readers.join_next().await.is_some() {}
            let _ = ev_tx.send(Event::End).await;
        });
        Ok(Session::new(events, cmd_tx, chosen))
    }

    /// Opens a WebSocket session offering exactly `protocols` (binary channel protocols).
    pub async fn open_ws(url: &str, opts: StdioOpts, protocols: &[&str]) -> Result<Session> {
        let (ws, chosen) = ws_connect(url, protocols).await?;
        let base64 = chosen.contains("base64");
        let v5 = chosen == "v5.channel.k8s.io";
        let _ = opts;
        let (mut tx, mut rx) = ws.split();
        let (ev_tx, events) = mpsc::channel(64);
        let (cmd_tx, mut commands) = mpsc::channel::<Command>(64);
        let encode = move |ch: u8, data: &[u8]| {
            if base64 {
                use base64::Engine;
                let mut t = String::from(char::from(b'0' + ch));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut t);
                Message::Text(t.into())
            } else {
                let mut b = vec![ch];
                b.extend_from_slice(data);
                Message::Binary(b.into())
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    c = commands.recv() => {
                        let msg = match c {
                            Some(Command::Stdin(d)) => encode(0, &d),
                            Some(Command::CloseStdin) if v5 => Message::Binary(vec![255u8, 0].into()),
                            Some(Command::CloseStdin) => continue,
                            Some(Command::Resize(w, h)) => encode(4, format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes()),
                            None => break,
                        };
                        if tx.send(msg).await.is_err() { break }
                    }
                    m = rx.next() => {
                        let payload = match m {
                            Some(Ok(Message::Binary(b))) => b.to_vec(),
                            Some(Ok(Message::Text(t))) => {
                                use base64::Engine;
                                let raw = t.as_bytes();
                                let Some((&d, rest)) = raw.split_first() else { continue };
                                let mut v = vec![d.wrapping_sub(b'0')];
                                v.extend(base64::engine::general_purpose::STANDARD.decode(rest).unwrap_or_default());
                                v
                            }
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                            Some(Ok(_)) => continue,
                        };
                        let Some((&ch, data)) = payload.split_first() else { continue };
                        let ev = match ch {
                            1 => Event::Stdout(data.to_vec()),
                            2 => Event::Stderr(data.to_vec()),
                            3 => Event::Status(data.to_vec()),
                            _ => continue,
                        };
                        let _ = ev_tx.send(ev).await;
                    }
                }
            }
            let _ = ev_tx.send(Event::End).await;
        });
        Ok(Session::new(events, cmd_tx, chosen))
    }

    fn new(
        events: mpsc::Receiver<Event>,
        commands: mpsc::Sender<Command>,
        protocol: String,
    ) -> Session {
        Session {
            events,
            commands: Some(commands),
            out: StreamOutput {
                protocol,
                ..Default::default()
            },
            ended: false,
        }
    }

    /// Sends bytes on stdin.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.command(Command::Stdin(data.to_vec())).await
    }

    /// Closes stdin (SPDY: FIN on the stdin stream; WebSocket v5: the close message).
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.command(Command::CloseStdin).await
    }

    /// Sends a terminal size.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        self.command(Command::Resize(width, height)).await
    }

    async fn command(&mut self, c: Command) -> Result<()> {
        let tx = self
            .commands
            .as_ref()
            .ok_or_else(|| anyhow!("session finished"))?;
        tx.send(c).await.map_err(|_| anyhow!("session ended"))
    }

    fn take(&mut self, ev: Event) {
        match ev {
            Event::Stdout(d) => self.out.stdout.extend(d),
            Event::Stderr(d) => self.out.stderr.extend(d),
            Event::Status(d) => self.out.status.extend(d),
            Event::End => self.ended = true,
        }
    }

    /// Waits until stdout contains `needle`; returns stdout so far.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = self.out.stdout_text();
            if text.contains(needle) {
                return Ok(text);
            }
            if self.ended {
                bail!(
                    "session ended before stdout held {needle:?}: {:?}",
                    self.out
                );
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => self.take(ev),
                Ok(None) => self.ended = true,
                Err(_) => bail!("no {needle:?} on stdout within {timeout:?}: {:?}", self.out),
            }
        }
    }

    /// Waits for the session to end; returns all it saw.
    pub async fn finish(mut self, timeout: Duration) -> Result<StreamOutput> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => self.take(ev),
                Ok(None) => self.ended = true,
                Err(_) => bail!("session did not end within {timeout:?}: {:?}", self.out),
            }
        }
        self.commands = None;
        Ok(self.out)
    }
}

/// Runs a whole session: sends `stdin` (if any) then closes it, and waits for the end.
pub async fn run(
    url: &str,
    transport: Transport,
    opts: StdioOpts,
    stdin: Option<&[u8]>,
) -> Result<StreamOutput> {
    let mut s = Session::open(url, transport, opts).await?;
    if let Some(data) = stdin {
        s.send(data).await?;
        s.close_stdin().await?;
    }
    s.finish(Duration::from_secs(60)).await
}

/// A port-forward connection: many forwarded requests over one connection.
pub struct PortForward {
    conn: spdy::Connection,
    next_request: std::sync::atomic::AtomicU32,
    _incoming: spdy::Incoming,
}

impl PortForward {
    /// Connects over SPDY (`portforward.k8s.io`) or WebSocket (SPDY tunnelled,
    /// `SPDY/3.1+portforward.k8s.io`).
    pub async fn connect(url: &str, transport: Transport) -> Result<PortForward> {
        let (conn, incoming) = match transport {
            Transport::Spdy => {
                let (c, i, chosen) = spdy_connect(url, &["portforward.k8s.io"]).await?;
                if chosen != "portforward.k8s.io" {
                    bail!("server chose {chosen:?} for port-forward");
                }
                (c, i)
            }
            Transport::WebSocket => {
                let (ws, chosen) = ws_connect(url, &["SPDY/3.1+portforward.k8s.io"]).await?;
                if chosen != "SPDY/3.1+portforward.k8s.io" {
                    bail!("server chose {chosen:?} for port-forward");
                }
                spdy::client(tunnel(ws), spdy::Config::default())
            }
        };
        Ok(PortForward {
            conn,
            next_request: std::sync::atomic::AtomicU32::new(0),
            _incoming: incoming,
        })
    }

    /// One forwarded connection to `port`: sends `data`, half-closes, and returns what
    /// came back on the data stream and on the error stream.
    pub async fn request(&self, port: u16, data: &[u8]) -> Result<(Vec<u8>, String)> {
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let headers = |kind: &str| {
            vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), id.clone()),
            ]
        };
        let mut error = self.conn.open(headers("error"), false).await?;
        error.wait_reply().await?;
        let mut stream = self.conn.open(headers("data"), false).await?;
        stream.wait_reply().await?;
        let (mut er, mut ew) = tokio::io::split(error);
        ew.shutdown().await?;
        let (mut r, mut w) = tokio::io::split(stream);
        w.write_all(data).await?;
        w.shutdown().await?;
        let mut got = Vec::new();
        let mut err = Vec::new();
        let (a, b) = tokio::join!(r.read_to_end(&mut got), er.read_to_end(&mut err));
        a.context("read the data stream")?;
        b.context("read the error stream")?;
        Ok((got, String::from_utf8_lossy(&err).into_owned()))
    }
}

/// A WebSocket as a byte stream for the tunnelled SPDY connection: a duplex pipe and a task
/// that moves bytes between it and binary messages.
fn tunnel<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut tx, mut rx) = ws.split();
        let (mut pr, mut pw) = tokio::io::split(theirs);
        let up = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = pr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    let _ = tx.close().await;
                    return;
                }
                if tx
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        };
        let down = async {
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Binary(b) = m
                    && pw.write_all(&b).await.is_err()
                {
                    return;
                }
            }
            let _ = pw.shutdown().await;
        };
        tokio::join!(up, down);
    });
    ours
}

/// The time a test waits for a session at most.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// Exec: the URL berthd answers for `cmd` in container `id`.
pub async fn exec_url(
    cri: &crate::Cri,
    id: &str,
    cmd: &[&str],
    o: StdioOpts,
) -> std::result::Result<String, tonic::Status> {
    let mut c = cri.runtime.clone();
    let r = c
        .exec(berth_cri::v1::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        })
        .await?;
    Ok(r.into_inner().url)
}

/// Attach: the URL berthd answers for container `id`.
pub async fn attach_url(
    cri: &crate::Cri,
    id: &str,
    o: StdioOpts,
) -> std::result::Result<String, tonic::Status> {
    let mut c = cri.runtime.clone();
    let r = c
        .attach(berth_cri::v1::AttachRequest {
            container_id: id.into(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        })
        .await?;
    Ok(r.into_inner().url)
}

/// PortForward: the URL berthd answers for pod `id`.
pub async fn port_forward_url(
    cri: &crate::Cri,
    id: &str,
    ports: &[i32],
) -> std::result::Result<String, tonic::Status> {
    let mut c = cri.runtime.clone();
    let r = c
        .port_forward(berth_cri::v1::PortForwardRequest {
            pod_sandbox_id: id.into(),
            port: ports.to_vec(),
        })
        .await?;
    Ok(r.into_inner().url)
}
