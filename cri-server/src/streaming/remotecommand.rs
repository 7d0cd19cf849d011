//! Kubernetes remotecommand (exec and attach) independent of the transport: protocol
//! versions, the status the error stream carries, resize messages, and the loop that
//! joins a client's streams to a runtime session.

use serde::Deserialize;
use tokio::sync::mpsc;

use super::backend::{Output, Session};

/// A remotecommand protocol version. Each adds to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`: stdin, stdout, stderr, error as text.
    V1,
    /// `v2.channel.k8s.io`: streams opened only when asked for.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a metav1.Status as JSON.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only): the client can close its stdin.
    V5,
}

/// The SPDY protocols served, in the server's order of preference.
pub const SPDY_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

impl Version {
    /// The version a SPDY `X-Stream-Protocol-Version` names.
    pub fn from_spdy(name: &str) -> Option<Version> {
        match name {
            "v5.channel.k8s.io" => Some(Version::V5),
            "v4.channel.k8s.io" => Some(Version::V4),
            "v3.channel.k8s.io" => Some(Version::V3),
            "v2.channel.k8s.io" => Some(Version::V2),
            "channel.k8s.io" => Some(Version::V1),
            _ => None,
        }
    }

    /// Whether a terminal's size changes travel on a resize stream.
    pub fn has_resize(self) -> bool {
        self >= Version::V3
    }
}

/// What the client sent, as the transport decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes for stdin.
    Stdin(Vec<u8>),
    /// The client closed its stdin.
    StdinEof,
    /// The client's terminal size.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// The connection is gone: stop at once, nothing more can be said.
    Gone,
}

/// Where output goes: the transport's stdout and stderr.
#[tonic::async_trait]
pub trait Sink: Send {
    /// Writes to the client's stdout stream (dropped when it asked for none).
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Writes to the client's stderr stream (dropped when it asked for none).
    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()>;
}

/// Exec or attach: they end differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An exec of this command.
    Exec(Vec<String>),
    /// An attach.
    Attach,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: the error stream gets this status.
    Done(Result<(), Failure>),
    /// The client went away (or stopped reading output); nothing more to send.
    Gone,
}

/// A session that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The command exited with a non-zero code.
    ExitCode {
        /// The command.
        cmd: Vec<String>,
        /// Its exit status.
        code: i32,
    },
    /// Anything else; the message says what.
    Internal(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::ExitCode { cmd, code } => format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            ),
            Failure::Internal(m) => format!("Internal error occurred: {m}"),
        }
    }
}

/// What the error stream carries at the end, per version: v4 and later a metav1.Status
/// as JSON, earlier versions the message of a failure as text and nothing on success.
pub fn status_bytes(version: Version, result: &Result<(), Failure>) -> Vec<u8> {
    if version < Version::V4 {
        return match result {
            Ok(()) => Vec::new(),
            Err(f) => f.message().into_bytes(),
        };
    }
    let value = match result {
        Ok(()) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Err(f @ Failure::ExitCode { code, .. }) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": f.message(),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(f @ Failure::Internal(m)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": f.message(),
            "reason": "InternalError",
            "details": {"causes": [{"message": m}]},
            "code": 500,
        }),
    };
    value.to_string().into_bytes()
}

/// Largest resize message kept while waiting for the rest of it.
const MAX_RESIZE_BUFFER: usize = 4096;

#[derive(Deserialize)]
struct TerminalSize {
    #[serde(alias = "width")]
    #[serde(rename = "Width")]
    width: u16,
    #[serde(alias = "height")]
    #[serde(rename = "Height")]
    height: u16,
}

/// Decodes the resize stream: JSON objects one after another, split anywhere.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Adds bytes; returns the sizes completed by them, in order.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(u16, u16)>, String> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut used = 0;
        let mut iter = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
        loop {
            match iter.next() {
                Some(Ok(s)) => {
                    sizes.push((s.width, s.height));
                    used = iter.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("bad resize message: {e}")),
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_RESIZE_BUFFER {
            return Err(format!(
                "resize message longer than {MAX_RESIZE_BUFFER} bytes"
            ));
        }
        Ok(sizes)
    }
}

/// Output queued between the task reading the session and the loop below.
const OUTPUT_QUEUE: usize = 4;

/// Joins a client to a session until one of them ends. `input` carries what the client
/// sent; output goes to `sink`. Dropping the session at the end releases it (an exec
/// process is killed by the runtime if it still runs).
pub async fn run(
    session: Session,
    kind: &Kind,
    mut input: mpsc::Receiver<Input>,
    sink: &mut dyn Sink,
) -> Outcome {
    let Session {
        tty,
        stdin_once,
        output,
        input: mut to_session,
    } = session;
    // A task of its own reads the session, so that the select below only waits on
    // channels, which are cancel-safe.
    let (out_tx, mut out_rx) = mpsc::channel(OUTPUT_QUEUE);
    let reader = tokio::spawn(async move {
        let mut output = output;
        loop {
            let next = output.recv().await;
            let last = !matches!(next, Ok(Some(Output::Stdout(_) | Output::Stderr(_))));
            if out_tx.send(next).await.is_err() || last {
                return;
            }
        }
    });
    let mut input_open = true;
    let outcome = loop {
        tokio::select! {
            next = out_rx.recv() => match next {
                Some(Ok(Some(Output::Stdout(data)))) => {
                    if sink.stdout(&data).await.is_err() {
                        break Outcome::Gone;
                    }
                }
                Some(Ok(Some(Output::Stderr(data)))) => {
                    if sink.stderr(&data).await.is_err() {
                        break Outcome::Gone;
                    }
                }
                Some(Ok(Some(Output::Exit { exit_code }))) => break Outcome::Done(match kind {
                    Kind::Exec(cmd) if exit_code != 0 => Err(Failure::ExitCode {
                        cmd: cmd.clone(),
                        code: exit_code,
                    }),
                    _ => Ok(()),
                }),
                Some(Ok(Some(Output::Error(m)))) | Some(Err(m)) => {
                    break Outcome::Done(Err(Failure::Internal(m)));
                }
                Some(Ok(None)) | None => break Outcome::Done(match kind {
                    Kind::Exec(_) => Err(Failure::Internal(
                        "the exec session ended without an exit status".into(),
                    )),
                    Kind::Attach => Ok(()),
                }),
            },
            next = input.recv(), if input_open => match next {
                Some(Input::Stdin(data)) => {
                    if let Err(e) = to_session.stdin(&data).await {
                        tracing::debug!(error = %e, "stdin not delivered");
                    }
                }
                Some(Input::StdinEof) => {
                    let _ = to_session.close_stdin().await;
                    // As containerd: an attach ends with the client's stdin unless the
                    // container closes its own stdin then (stdin_once without a TTY)
                    // and its output runs on until it exits.
                    if *kind == Kind::Attach && (tty || !stdin_once) {
                        break Outcome::Done(Ok(()));
                    }
                }
                Some(Input::Resize { width, height }) => {
                    if tty {
                        let _ = to_session.resize(width, height).await;
                    }
                }
                Some(Input::Gone) => break Outcome::Gone,
                None => input_open = false,
            },
        }
    };
    reader.abort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_for_exit_code_is_what_client_go_decodes() {
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        let bytes = status_bytes(Version::V4, &Err(Failure::ExitCode { cmd, code: 3 }));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("command terminated with non-zero exit code")
        );
        let ok = status_bytes(Version::V4, &Ok(()));
        assert_eq!(ok, br#"{"metadata":{},"status":"Success"}"#);
    }

    #[test]
    fn older_versions_send_text_and_nothing_on_success() {
        assert!(status_bytes(Version::V2, &Ok(())).is_empty());
        let e = status_bytes(Version::V3, &Err(Failure::Internal("boom".into())));
        assert_eq!(e, b"Internal error occurred: boom");
    }

    #[test]
    fn resize_messages_split_anywhere() {
        let mut d = ResizeDecoder::default();
        let all = br#"{"Width":80,"Height":24}{"Width":100,"Height":50}"#;
        let (a, b) = all.split_at(30);
        assert_eq!(d.push(a).unwrap(), vec![(80, 24)]);
        assert_eq!(d.push(b).unwrap(), vec![(100, 50)]);
        assert_eq!(d.push(b"\n").unwrap(), vec![]);
        assert!(d.push(br#"{"Width":"wide"}"#).is_err());
        let mut d = ResizeDecoder::default();
        assert!(d.push(&[b' '; 10]).unwrap().is_empty());
        let mut d = ResizeDecoder::default();
        let mut long = b"{\"Width\":".to_vec();
        long.extend(std::iter::repeat_n(b' ', 5000));
        assert!(d.push(&long).is_err());
    }

    #[test]
    fn spdy_names_map_to_versions() {
        for name in SPDY_PROTOCOLS {
            assert!(Version::from_spdy(name).is_some(), "{name}");
        }
        assert_eq!(Version::from_spdy("v6.channel.k8s.io"), None);
        assert!(Version::V3.has_resize() && !Version::V2.has_resize());
    }
}
