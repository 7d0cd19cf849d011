//! The streaming backend of berthd: sessions held by the pod's monitor, connections made
//! in the pod's network namespace.

use runtime_core::monitor::{SessionOutput as MonitorOutput, SessionReader, SessionWriter};
use runtime_core::pods::PodService;
use tokio::net::TcpStream;

use super::backend::{
    AttachTarget, Backend, ExecTarget, Output, Session, SessionInput, SessionOutput,
};

/// [`Backend`] over berth's [`PodService`].
pub struct PodBackend {
    pods: PodService,
}

impl PodBackend {
    /// Serves the streams of `pods`.
    pub fn new(pods: PodService) -> PodBackend {
        PodBackend { pods }
    }
}

fn session(s: runtime_core::monitor::StdioSession, stdin_once: bool) -> Session {
    let tty = s.tty;
    let (reader, writer) = s.into_split();
    Session {
        tty,
        stdin_once,
        output: Box::new(Reader(reader)),
        input: Box::new(Writer(writer)),
    }
}

#[tonic::async_trait]
impl Backend for PodBackend {
    async fn exec(&self, t: &ExecTarget) -> Result<Session, String> {
        let s = self
            .pods
            .exec_session(&t.container_id, t.cmd.clone(), t.tty, t.stdin)
            .await
            .map_err(|e| e.to_string())?;
        Ok(session(s, false))
    }

    async fn attach(&self, t: &AttachTarget) -> Result<Session, String> {
        let s = self
            .pods
            .attach_session(&t.container_id, t.stdin, t.stdout, t.stderr)
            .await
            .map_err(|e| e.to_string())?;
        let stdin_once = s.stdin_once;
        Ok(session(s, stdin_once))
    }

    async fn dial(&self, pod_sandbox_id: &str, port: u16) -> Result<TcpStream, String> {
        self.pods
            .dial_pod_port(pod_sandbox_id, port)
            .await
            .map_err(|e| e.to_string())
    }
}

struct Reader(SessionReader);

#[tonic::async_trait]
impl SessionOutput for Reader {
    async fn recv(&mut self) -> Result<Option<Output>, String> {
        Ok(match self.0.recv().await.map_err(|e| e.to_string())? {
            None => None,
            Some(MonitorOutput::Stdout(d)) => Some(Output::Stdout(d)),
            Some(MonitorOutput::Stderr(d)) => Some(Output::Stderr(d)),
            Some(MonitorOutput::Exit { exit_code, .. }) => Some(Output::Exit { exit_code }),
            Some(MonitorOutput::Error(m)) => Some(Output::Error(m)),
        })
    }
}

struct Writer(SessionWriter);

#[tonic::async_trait]
impl SessionInput for Writer {
    async fn stdin(&mut self, data: &[u8]) -> Result<(), String> {
        self.0.stdin(data).await.map_err(|e| e.to_string())
    }

    async fn close_stdin(&mut self) -> Result<(), String> {
        self.0.close_stdin().await.map_err(|e| e.to_string())
    }

    async fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        self.0
            .resize(width, height)
            .await
            .map_err(|e| e.to_string())
    }
}
