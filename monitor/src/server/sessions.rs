//! Attach and exec sessions: once the `attached` / `exec_started` line is queued, the
//! client's connection carries frames (see [`crate::frame`]) both ways. Output is queued on
//! the client (`Client::out`) and written when its socket is writable; stdin goes to the
//! container's or process's [`Input`].
//!
//! An attach client whose queue passes [`ATTACH_QUEUE_CAP`] is dropped: the container and
//! its log never wait for it. An exec client's queue instead pauses the reading of the
//! process's output (see `exec`). A malformed frame ends its session (with an error frame)
//! and nothing else.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use crate::error::MonitorError;
use crate::frame::{self, ExitFrame, FrameType};
use crate::logfmt::Stream;
use crate::protocol::Reply;

use super::console::resize;
use super::*;

/// What a session is attached to.
pub(super) enum SessionKind {
    /// A container's stdio.
    Attach {
        container: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// The exec'd process of the same token (see `exec`).
    Exec,
}

/// The session state of a client connection.
pub(super) struct Session {
    pub(super) kind: SessionKind,
    /// Incoming bytes not yet parsed (at most one partial frame).
    inbuf: Vec<u8>,
    /// The client's direction is at EOF.
    input_eof: bool,
    /// This client's stdin has ended (StdinClose, EOF or disconnect).
    stdin_done: bool,
    /// Close once everything queued is written.
    pub(super) closing: bool,
}

/// Output queued for a client is compacted once this much has been written.
const COMPACT_AT: usize = 64 * 1024;

impl Client {
    /// Bytes queued and not yet written.
    pub(super) fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    /// Whether this is an attach session of container `id`.
    fn attached_to(&self, id: &str) -> bool {
        self.state == ClientState::Session
            && matches!(&self.session, Some(Session { kind: SessionKind::Attach { container, .. }, .. }) if container == id)
    }
}

/// Sends container output to every attach session of `id` that asked for `stream`;
/// a session whose queue would pass [`ATTACH_QUEUE_CAP`] is dropped.
pub(super) fn fan_out(clients: &mut [Client], id: &str, stream: Stream, data: &[u8]) {
    for c in clients.iter_mut() {
        if !c.attached_to(id) {
            continue;
        }
        let Some(Session {
            kind: SessionKind::Attach { stdout, stderr, .. },
            closing: false,
            ..
        }) = &c.session
        else {
            continue;
        };
        let (wanted, kind) = match stream {
            Stream::Stdout => (*stdout, FrameType::Stdout),
            Stream::Stderr => (*stderr, FrameType::Stderr),
        };
        if !wanted {
            continue;
        }
        if c.queued() + data.len() > ATTACH_QUEUE_CAP {
            eprintln!(
                "berth-monitor: container {id}: dropping attach client {}: {} bytes queued",
                c.token,
                c.queued()
            );
            c.state = ClientState::Done;
            continue;
        }
        frame::encode(&mut c.out, kind, data);
    }
}

impl Server {
    /// Whether a client is a session waiting to write its last frames (under its deadline).
    pub(super) fn closing_session(c: &Client) -> bool {
        c.state == ClientState::Session && c.session.as_ref().is_some_and(|s| s.closing)
    }

    pub(super) fn client_index(&self, token: u64) -> Option<usize> {
        self.clients.iter().position(|c| c.token == token)
    }

    /// Attach sessions and exec sessions (including execs still starting).
    fn session_count(&self) -> usize {
        let sessions = self.clients.iter().filter(|c| c.session.is_some()).count();
        sessions + self.execs.iter().filter(|x| x.is_starting()).count()
    }

    pub(super) fn check_session_limit(&self) -> Result<(), MonitorError> {
        if self.session_count() >= MAX_SESSIONS {
            return Err(MonitorError::TooManySessions {
                limit: MAX_SESSIONS,
            });
        }
        Ok(())
    }

    /// `attach`: validates, answers `attached` and begins the session.
    pub(super) fn attach(
        &mut self,
        token: u64,
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<(), MonitorError> {
        let c = self
            .containers
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| MonitorError::NotFound { id: id.clone() })?;
        match c.phase {
            Phase::Running { .. } => {}
            Phase::Creating { .. } => return Err(MonitorError::Busy { id }),
            Phase::Draining { .. } | Phase::Exited { .. } => {
                return Err(MonitorError::NotRunning { id });
            }
        }
        if stdin && !c.stdin_enabled {
            return Err(MonitorError::BadRequest {
                message: format!("container {id} was not created with stdin"),
            });
        }
        let tty = c.tty;
        self.check_session_limit()?;
        let kind = SessionKind::Attach {
            container: id,
            stdin,
            stdout,
            stderr,
        };
        self.start_session(token, &Reply::Attached { tty }, kind);
        Ok(())
    }

    /// Queues `reply` on client `token` and turns its connection into a session.
    pub(super) fn start_session(&mut self, token: u64, reply: &Reply, kind: SessionKind) {
        let Some(idx) = self.client_index(token) else {
            return;
        };
        let c = &mut self.clients[idx];
        let mut line = serde_json::to_vec(reply).unwrap_or_default();
        line.push(b'\n');
        c.out = line;
        c.written = 0;
        c.session = Some(Session {
            kind,
            inbuf: std::mem::take(&mut c.inbuf),
            input_eof: false,
            stdin_done: false,
            closing: false,
        });
        c.state = ClientState::Session;
        self.session_flush(idx);
        // Frames the client sent right behind its request.
        self.session_frames(token);
    }

    /// The poll events of a session's connection.
    pub(super) fn session_events(&self, c: &Client) -> i16 {
        let Some(s) = &c.session else {
            return 0;
        };
        let mut events = 0;
        if c.queued() > 0 {
            events |= libc::POLLOUT;
        }
        if !s.input_eof && !s.closing && !self.session_input_full(c.token, s) {
            events |= libc::POLLIN;
        }
        events
    }

    /// Whether the stdin this session writes to is full (its frames then wait).
    fn session_input_full(&self, token: u64, s: &Session) -> bool {
        match &s.kind {
            SessionKind::Attach {
                container,
                stdin: true,
                ..
            } => self
                .containers
                .iter()
                .find(|c| &c.id == container)
                .is_some_and(|c| c.input.full()),
            SessionKind::Attach { .. } => false,
            SessionKind::Exec => self
                .execs
                .iter()
                .find(|x| x.token == token)
                .is_some_and(|x| x.input.full()),
        }
    }

    pub(super) fn session_io(&mut self, idx: usize, revents: i16) {
        if revents & libc::POLLOUT != 0 {
            self.session_flush(idx);
        }
        if revents & libc::POLLIN != 0 {
            self.session_read(idx);
        }
        if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            // The client closed its socket (a half-close only gives EOF on reads).
            if let Some(c) = self.clients.get_mut(idx) {
                c.state = ClientState::Done;
            }
        }
    }

    fn session_read(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        let token = c.token;
        let Some(s) = c.session.as_mut() else {
            return;
        };
        let mut eof = false;
        loop {
            match c.stream.read(&mut self.readbuf) {
                Ok(0) => {
                    s.input_eof = true;
                    eof = true;
                }
                Ok(n) => s.inbuf.extend_from_slice(&self.readbuf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    c.state = ClientState::Done;
                    return;
                }
            }
            break;
        }
        self.session_frames(token);
        if eof {
            // A half-closed client sends no more stdin; its output goes on.
            self.session_stdin_end(token);
        }
    }

    /// Handles the complete frames buffered for session `token`.
    fn session_frames(&mut self, token: u64) {
        let Some(idx) = self.client_index(token) else {
            return;
        };
        let Some(s) = self.clients[idx].session.as_mut() else {
            return;
        };
        let inbuf = std::mem::take(&mut s.inbuf);
        let mut pos = 0;
        let failure = loop {
            match frame::parse(&inbuf[pos..]) {
                Ok(Some((kind, payload, n))) => {
                    if let Err(message) = self.session_frame(token, kind, payload) {
                        break Some(message);
                    }
                    pos += n;
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        if let Some(message) = failure {
            self.session_fail(token, &message);
            return;
        }
        if let Some(s) = self
            .client_index(token)
            .and_then(|i| self.clients[i].session.as_mut())
        {
            let mut rest = inbuf;
            rest.drain(..pos);
            if rest.capacity() > 2 * (frame::HEADER_LEN + frame::MAX_PAYLOAD) {
                rest.shrink_to_fit();
            }
            s.inbuf = rest;
        }
    }

    /// One frame from a client. `Err` ends the session.
    fn session_frame(&mut self, token: u64, kind: FrameType, payload: &[u8]) -> Result<(), String> {
        let Some(idx) = self.client_index(token) else {
            return Ok(());
        };
        let Some(s) = &self.clients[idx].session else {
            return Ok(());
        };
        let (attach_to, stdin_ok) = match &s.kind {
            SessionKind::Attach {
                container, stdin, ..
            } => (Some(container.clone()), *stdin && !s.stdin_done),
            SessionKind::Exec => (None, !s.stdin_done),
        };
        match kind {
            FrameType::Stdin => {
                if !stdin_ok {
                    return Ok(()); // this client has no (more) stdin: dropped
                }
                if let Some(input) = self.session_input(token, attach_to.as_deref()) {
                    input.push(payload);
                }
                Ok(())
            }
            FrameType::StdinClose => {
                self.session_stdin_end(token);
                Ok(())
            }
            FrameType::Resize => {
                let (width, height) = frame::decode_resize(payload)
                    .ok_or_else(|| format!("resize payload of {} bytes", payload.len()))?;
                if let Some(fd) = self.session_terminal(token, attach_to.as_deref()) {
                    resize(fd, width, height);
                }
                Ok(())
            }
            other => Err(format!("a client does not send {other:?} frames")),
        }
    }

    fn session_input(&mut self, token: u64, container: Option<&str>) -> Option<&mut Input> {
        match container {
            Some(id) => self
                .containers
                .iter_mut()
                .find(|c| c.id == id)
                .map(|c| &mut c.input),
            None => self
                .execs
                .iter_mut()
                .find(|x| x.token == token)
                .map(|x| &mut x.input),
        }
    }

    fn session_terminal(&self, token: u64, container: Option<&str>) -> Option<i32> {
        let pipes = match container {
            Some(id) => &self.containers.iter().find(|c| c.id == id)?.pipes,
            None => &self.execs.iter().find(|x| x.token == token)?.pipes,
        };
        pipes[TERMINAL]
            .as_ref()
            .and_then(|p| p.file.as_ref())
            .map(|f| f.as_raw_fd())
    }

    /// This client's stdin has ended: an exec'd process's stdin is closed; a container's
    /// only with `stdin_once`, by the first session with stdin.
    fn session_stdin_end(&mut self, token: u64) {
        let Some(idx) = self.client_index(token) else {
            return;
        };
        let Some(s) = self.clients[idx].session.as_mut() else {
            return;
        };
        if s.stdin_done {
            return;
        }
        s.stdin_done = true;
        match &s.kind {
            SessionKind::Attach {
                container,
                stdin: true,
                ..
            } => {
                if let Some(c) = self.containers.iter_mut().find(|c| &c.id == container)
                    && c.stdin_once
                {
                    c.input.close_soon();
                }
            }
            SessionKind::Attach { .. } => {}
            SessionKind::Exec => {
                if let Some(x) = self.execs.iter_mut().find(|x| x.token == token) {
                    x.input.close_soon();
                }
            }
        }
    }

    /// Ends a session with an error frame.
    fn session_fail(&mut self, token: u64, message: &str) {
        eprintln!("berth-monitor: session {token}: {message}");
        self.session_end(token, FrameType::Error, message.as_bytes());
    }

    /// Queues a last frame on session `token` and closes it once written.
    pub(super) fn session_end(&mut self, token: u64, kind: FrameType, payload: &[u8]) {
        let Some(idx) = self.client_index(token) else {
            return;
        };
        let c = &mut self.clients[idx];
        let Some(s) = c.session.as_mut() else {
            return;
        };
        if !s.closing {
            s.closing = true;
            s.input_eof = true;
            frame::encode(&mut c.out, kind, payload);
            // A client that does not take its last frames in time is closed anyway.
            c.deadline = Instant::now() + CLIENT_TIMEOUT;
        }
        self.session_flush(idx);
    }

    /// Ends every attach session of container `id`, with an exit frame when it exited.
    pub(super) fn end_attach_sessions(&mut self, id: &str, exit: Option<ExitFrame>) {
        let tokens: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| c.attached_to(id))
            .map(|c| c.token)
            .collect();
        let payload = exit.and_then(|x| serde_json::to_vec(&x).ok());
        for token in tokens {
            match &payload {
                Some(p) => self.session_end(token, FrameType::Exit, p),
                None => self.session_end(token, FrameType::Error, b"the container is gone"),
            }
        }
    }

    /// Writes what is queued without blocking; closes a session that is done.
    pub(super) fn session_flush(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        while c.written < c.out.len() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => break,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.state = ClientState::Done;
                    return;
                }
            }
        }
        if c.written == c.out.len() {
            c.written = 0;
            if c.out.capacity() > COMPACT_AT {
                c.out = Vec::new();
            } else {
                c.out.clear();
            }
        } else if c.written >= COMPACT_AT {
            c.out.drain(..c.written);
            c.written = 0;
        }
        if c.queued() == 0 && c.session.as_ref().is_some_and(|s| s.closing) {
            c.state = ClientState::Done;
        }
    }

    /// Before closed connections are dropped: their stdin ends (see
    /// [`Self::session_stdin_end`]).
    pub(super) fn end_sessions(&mut self) {
        let ended: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| c.state == ClientState::Done)
            .filter(|c| c.session.as_ref().is_some_and(|s| !s.stdin_done))
            .map(|c| c.token)
            .collect();
        for token in ended {
            self.session_stdin_end(token);
        }
    }
}
