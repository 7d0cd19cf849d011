//! A backend for the protocol tests: an "exec" that runs a tiny script of its own, an
//! attach that echoes stdin, and dials to the host's loopback.

use std::sync::Arc;
use std::sync::Mutex;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::backend::{
    AttachTarget, Backend, ExecTarget, Output, Session, SessionInput, SessionOutput,
};

/// What the fake saw, for assertions.
#[derive(Debug, Default)]
pub struct Seen {
    /// Resizes, in order.
    pub resizes: Vec<(u16, u16)>,
    /// Whether stdin was closed.
    pub stdin_closed: bool,
    /// Sessions dropped (ended).
    pub dropped: usize,
}

/// The fake backend.
#[derive(Default)]
pub struct Fake {
    /// Shared record.
    pub seen: Arc<Mutex<Seen>>,
}

/// The commands the fake exec knows: `echo WORDS` (stdout), `err WORDS` (stderr),
/// `exit N`, `cat` (stdin to stdout until it closes), `fail` (an error), `flood N` (N
/// KiB of 'x').
#[tonic::async_trait]
impl Backend for Fake {
    async fn exec(&self, t: &ExecTarget) -> Result<Session, String> {
        let (tx, rx) = mpsc::channel(8);
        let (in_tx, in_rx) = mpsc::channel(8);
        let cmd = t.cmd.clone();
        let seen = Arc::clone(&self.seen);
        tokio::spawn(script(cmd, tx, in_rx, seen));
        Ok(self.session(t.tty, false, rx, in_tx))
    }

    async fn attach(&self, t: &AttachTarget) -> Result<Session, String> {
        if t.container_id == "missing" {
            return Err("container missing not found".into());
        }
        let (tx, rx) = mpsc::channel(8);
        let (in_tx, in_rx) = mpsc::channel(8);
        let seen = Arc::clone(&self.seen);
        tokio::spawn(script(vec!["cat".into()], tx, in_rx, seen));
        Ok(self.session(t.tty, true, rx, in_tx))
    }

    async fn dial(&self, _pod: &str, port: u16) -> Result<TcpStream, String> {
        TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())
    }
}

impl Fake {
    fn session(
        &self,
        tty: bool,
        stdin_once: bool,
        rx: mpsc::Receiver<Output>,
        tx: mpsc::Sender<In>,
    ) -> Session {
        Session {
            tty,
            stdin_once,
            output: Box::new(Out(rx, Arc::clone(&self.seen))),
            input: Box::new(InTx(tx)),
        }
    }
}

enum In {
    Data(Vec<u8>),
    Eof,
    Resize(u16, u16),
}

async fn script(
    cmd: Vec<String>,
    tx: mpsc::Sender<Output>,
    mut rx: mpsc::Receiver<In>,
    seen: Arc<Mutex<Seen>>,
) {
    let words = cmd.get(1..).unwrap_or_default().join(" ");
    let code = match cmd.first().map(String::as_str) {
        Some("echo") => {
            let _ = tx.send(Output::Stdout(words.into_bytes())).await;
            0
        }
        Some("err") => {
            let _ = tx.send(Output::Stderr(words.into_bytes())).await;
            0
        }
        Some("exit") => words.parse().unwrap_or(1),
        Some("fail") => {
            let _ = tx.send(Output::Error("it failed".into())).await;
            return;
        }
        Some("flood") => {
            let kib: usize = words.parse().unwrap_or(1);
            for _ in 0..kib {
                if tx.send(Output::Stdout(vec![b'x'; 1024])).await.is_err() {
                    return;
                }
            }
            0
        }
        Some("cat") => {
            while let Some(i) = rx.recv().await {
                match i {
                    In::Data(d) => {
                        if tx.send(Output::Stdout(d)).await.is_err() {
                            return;
                        }
                    }
                    In::Resize(w, h) => {
                        lock(&seen).resizes.push((w, h));
                        let msg = format!("size {h} {w}\n").into_bytes();
                        let _ = tx.send(Output::Stdout(msg)).await;
                    }
                    In::Eof => {
                        lock(&seen).stdin_closed = true;
                        break;
                    }
                }
            }
            0
        }
        _ => 127,
    };
    let _ = tx.send(Output::Exit { exit_code: code }).await;
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Out(mpsc::Receiver<Output>, Arc<Mutex<Seen>>);

impl Drop for Out {
    fn drop(&mut self) {
        lock(&self.1).dropped += 1;
    }
}

#[tonic::async_trait]
impl SessionOutput for Out {
    async fn recv(&mut self) -> Result<Option<Output>, String> {
        Ok(self.0.recv().await)
    }
}

struct InTx(mpsc::Sender<In>);

#[tonic::async_trait]
impl SessionInput for InTx {
    async fn stdin(&mut self, data: &[u8]) -> Result<(), String> {
        self.0
            .send(In::Data(data.to_vec()))
            .await
            .map_err(|_| "closed".to_string())
    }

    async fn close_stdin(&mut self) -> Result<(), String> {
        let _ = self.0.send(In::Eof).await;
        Ok(())
    }

    async fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        let _ = self.0.send(In::Resize(width, height)).await;
        Ok(())
    }
}
