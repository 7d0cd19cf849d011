//! berthd's side of an attach or exec session with a monitor: after the `attached` /
//! `exec_started` reply line, the connection carries frames (`berth_monitor::frame`).
//! [`StdioSession::into_split`] gives a reader of the process's output and a writer of its
//! stdin and terminal size, to be driven from separate tasks.
//!
//! Dropping both halves closes the connection: the monitor then SIGKILLs an exec'd process
//! that is still running. Dropping only the [`SessionWriter`] half-closes it, which the
//! monitor takes as the end of this client's stdin (output goes on).

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::error::MonitorError;
use berth_monitor::frame::{self, ExitFrame, FrameType, HEADER_LEN, Header};

/// Something the monitor sent on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Bytes of the process's stdout (all of a terminal's output).
    Stdout(Vec<u8>),
    /// Bytes of the process's stderr.
    Stderr(Vec<u8>),
    /// The process (the container's init for attach) exited; the last message.
    Exit {
        /// Exit status, 128 + signal when killed by a signal.
        exit_code: i32,
        /// The signal that killed it.
        signal: Option<i32>,
    },
    /// The monitor ended the session with this error; the last message.
    Error(String),
}

/// An attach or exec session on a monitor connection.
#[derive(Debug)]
pub struct StdioSession {
    /// The process has a terminal: its output is all `Stdout`, resizes apply.
    pub tty: bool,
    /// Attach only: the container closes its stdin when the first attach with stdin ends
    /// (its `stdin_once`), so the attach runs on after the client's stdin ends.
    pub stdin_once: bool,
    reader: SessionReader,
    writer: SessionWriter,
}

/// The receiving half of a [`StdioSession`].
#[derive(Debug)]
pub struct SessionReader {
    stream: BufReader<OwnedReadHalf>,
    done: bool,
}

/// The sending half of a [`StdioSession`].
#[derive(Debug)]
pub struct SessionWriter {
    stream: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl StdioSession {
    /// A session on a connection whose reply line has been read. `reader` keeps whatever
    /// it buffered past that line: the first frames.
    pub(crate) fn new(tty: bool, reader: BufReader<OwnedReadHalf>, writer: OwnedWriteHalf) -> Self {
        StdioSession {
            tty,
            stdin_once: false,
            reader: SessionReader {
                stream: reader,
                done: false,
            },
            writer: SessionWriter {
                stream: writer,
                buf: Vec::new(),
            },
        }
    }

    /// The two halves.
    pub fn into_split(self) -> (SessionReader, SessionWriter) {
        (self.reader, self.writer)
    }
}

fn closed(e: std::io::Error) -> MonitorError {
    MonitorError::Unreachable {
        socket: "session".into(),
        message: e.to_string(),
    }
}

fn protocol(message: String) -> MonitorError {
    MonitorError::Protocol { message }
}

/// Turns a frame from the monitor into a [`SessionOutput`].
pub fn decode_output(kind: FrameType, payload: Vec<u8>) -> Result<SessionOutput, MonitorError> {
    Ok(match kind {
        FrameType::Stdout => SessionOutput::Stdout(payload),
        FrameType::Stderr => SessionOutput::Stderr(payload),
        FrameType::Exit => {
            let x: ExitFrame = serde_json::from_slice(&payload)
                .map_err(|e| protocol(format!("bad exit frame: {e}")))?;
            SessionOutput::Exit {
                exit_code: x.exit_code,
                signal: x.signal,
            }
        }
        FrameType::Error => SessionOutput::Error(String::from_utf8_lossy(&payload).into_owned()),
        other => return Err(protocol(format!("the monitor sent a {other:?} frame"))),
    })
}

impl SessionReader {
    /// The next output; `None` once the monitor closed the session (after `Exit` or
    /// `Error`, or when it went away).
    pub async fn recv(&mut self) -> Result<Option<SessionOutput>, MonitorError> {
        if self.done {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        // EOF before a header is the end of the session; inside a frame it is an error.
        let first = self.stream.read(&mut h[..1]).await.map_err(closed)?;
        if first == 0 {
            self.done = true;
            return Ok(None);
        }
        self.stream
            .read_exact(&mut h[1..])
            .await
            .map_err(|e| protocol(format!("truncated frame: {e}")))?;
        let header = Header::decode(h).map_err(|e| protocol(e.to_string()))?;
        let mut payload = vec![0u8; header.len];
        self.stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| protocol(format!("truncated frame: {e}")))?;
        let out = decode_output(header.kind, payload)?;
        if matches!(out, SessionOutput::Exit { .. } | SessionOutput::Error(_)) {
            self.done = true;
        }
        Ok(Some(out))
    }
}

impl SessionWriter {
    async fn send(&mut self) -> Result<(), MonitorError> {
        let r = self.stream.write_all(&self.buf).await.map_err(closed);
        self.buf.clear();
        r
    }

    /// Writes to the process's stdin (cut into frames of at most 32 KiB).
    pub async fn stdin(&mut self, data: &[u8]) -> Result<(), MonitorError> {
        if data.is_empty() {
            return Ok(());
        }
        frame::encode(&mut self.buf, FrameType::Stdin, data);
        self.send().await
    }

    /// No more stdin from this client: an exec'd process's stdin is closed; a container's
    /// only when it was created with `stdin_once`.
    pub async fn close_stdin(&mut self) -> Result<(), MonitorError> {
        frame::encode(&mut self.buf, FrameType::StdinClose, &[]);
        self.send().await
    }

    /// Sets the terminal's size (ignored without a terminal).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<(), MonitorError> {
        frame::encode_resize(&mut self.buf, width, height);
        self.send().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_and_decode() {
        let mut buf = Vec::new();
        frame::encode(&mut buf, FrameType::Stdout, b"out");
        frame::encode(&mut buf, FrameType::Stderr, b"");
        frame::encode(
            &mut buf,
            FrameType::Exit,
            br#"{"exit_code":137,"signal":9}"#,
        );
        frame::encode(&mut buf, FrameType::Error, "bad \u{e9}".as_bytes());
        let mut rest = &buf[..];
        let mut got = Vec::new();
        while let Some((kind, payload, n)) = frame::parse(rest).unwrap() {
            got.push(decode_output(kind, payload.to_vec()).unwrap());
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            got,
            vec![
                SessionOutput::Stdout(b"out".to_vec()),
                SessionOutput::Stderr(Vec::new()),
                SessionOutput::Exit {
                    exit_code: 137,
                    signal: Some(9)
                },
                SessionOutput::Error("bad \u{e9}".into()),
            ]
        );
        assert!(decode_output(FrameType::Stdin, b"x".to_vec()).is_err());
        assert!(decode_output(FrameType::Exit, b"{".to_vec()).is_err());
        let mut r = Vec::new();
        frame::encode_resize(&mut r, 132, 43);
        assert_eq!(r, [6, 0, 0, 0, 4, 0, 132, 0, 43]);
    }

    #[tokio::test]
    async fn reader_and_writer_over_a_socket() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (ar, aw) = a.into_split();
        let session = StdioSession::new(false, BufReader::new(ar), aw);
        let (mut reader, mut writer) = session.into_split();
        let (mut br, mut bw) = b.into_split();
        writer.stdin(&vec![b'x'; 40_000]).await.unwrap();
        writer.close_stdin().await.unwrap();
        writer.resize(80, 24).await.unwrap();
        writer.stdin(b"").await.unwrap();
        drop(writer);
        let mut sent = Vec::new();
        br.read_to_end(&mut sent).await.unwrap();
        let mut kinds = Vec::new();
        let mut rest = &sent[..];
        while let Some((kind, payload, n)) = frame::parse(rest).unwrap() {
            kinds.push((kind, payload.len()));
            rest = &rest[n..];
        }
        assert_eq!(
            kinds,
            vec![
                (FrameType::Stdin, 32768),
                (FrameType::Stdin, 40_000 - 32768),
                (FrameType::StdinClose, 0),
                (FrameType::Resize, 4),
            ]
        );
        let mut out = Vec::new();
        frame::encode(&mut out, FrameType::Stdout, b"hi");
        frame::encode(
            &mut out,
            FrameType::Exit,
            br#"{"exit_code":0,"signal":null}"#,
        );
        bw.write_all(&out).await.unwrap();
        assert_eq!(
            reader.recv().await.unwrap(),
            Some(SessionOutput::Stdout(b"hi".to_vec()))
        );
        assert_eq!(
            reader.recv().await.unwrap(),
            Some(SessionOutput::Exit {
                exit_code: 0,
                signal: None
            })
        );
        assert_eq!(reader.recv().await.unwrap(), None);
        // A truncated frame is an error, a clean EOF is the end.
        let (c, d) = tokio::net::UnixStream::pair().unwrap();
        let (cr, cw) = c.into_split();
        let (mut reader, _w) = StdioSession::new(true, BufReader::new(cr), cw).into_split();
        let (_dr, mut dw) = d.into_split();
        dw.write_all(&[1, 0, 0, 0, 9, b'a']).await.unwrap();
        drop(dw);
        drop(_dr);
        assert!(reader.recv().await.is_err());
    }
}
