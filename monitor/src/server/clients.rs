//! Client connections: accepting, reading a request line, answering (and handing the
//! connection to a session, see `sessions`).

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use crate::error::MonitorError;
use crate::protocol::{PROTOCOL_VERSION, Reply, Request};

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientState {
    Reading,
    /// Waiting for a create to finish.
    Waiting,
    Writing,
    /// An attach or exec session: frames both ways (see `sessions`).
    Session,
    Done,
}

pub(super) struct Client {
    pub(super) token: u64,
    pub(super) stream: UnixStream,
    pub(super) inbuf: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    pub(super) state: ClientState,
    pub(super) deadline: Instant,
    pub(super) exit_after: bool,
    /// Set in the `Session` state.
    pub(super) session: Option<super::sessions::Session>,
}

impl Server {
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Sessions have their own limit (MAX_SESSIONS, answered with an error).
                    let requests = self
                        .clients
                        .iter()
                        .filter(|c| c.state != ClientState::Session)
                        .count();
                    if requests >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    self.clients.push(Client {
                        token,
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        written: 0,
                        state: ClientState::Reading,
                        deadline: Instant::now() + CLIENT_TIMEOUT,
                        exit_after: false,
                        session: None,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or a transient error (EMFILE, ...)
            }
        }
    }

    pub(super) fn client_io(&mut self, token: u64, revents: i16) {
        let Some(idx) = self.clients.iter().position(|c| c.token == token) else {
            return;
        };
        match self.clients[idx].state {
            ClientState::Reading => self.client_read(idx),
            ClientState::Waiting => {
                if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    // The client left; the create goes on and its result is dropped.
                    self.clients[idx].state = ClientState::Done;
                }
            }
            ClientState::Writing => self.client_flush(idx),
            ClientState::Session => self.session_io(idx, revents),
            ClientState::Done => {}
        }
    }

    pub(super) fn client_read(&mut self, idx: usize) {
        let mut eof = false;
        {
            let c = &mut self.clients[idx];
            loop {
                match c.stream.read(&mut self.readbuf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&self.readbuf[..n]);
                        if c.inbuf.len() > MAX_REQUEST || self.readbuf[..n].contains(&b'\n') {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.state = ClientState::Done;
                        return;
                    }
                }
            }
        }
        let token = self.clients[idx].token;
        let c = &mut self.clients[idx];
        let line = match c.inbuf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                // What follows the line is kept: the first frames of a session.
                let rest = c.inbuf.split_off(pos + 1);
                let mut line = std::mem::replace(&mut c.inbuf, rest);
                line.truncate(pos);
                line
            }
            None if c.inbuf.len() > MAX_REQUEST => {
                c.inbuf = Vec::new();
                let error = MonitorError::BadRequest {
                    message: format!("request longer than {MAX_REQUEST} bytes"),
                };
                self.reply(token, Reply::Error { error });
                return;
            }
            None if eof => {
                let line = std::mem::take(&mut c.inbuf);
                if line.trim_ascii().is_empty() {
                    c.state = ClientState::Done;
                    return;
                }
                line
            }
            None => return,
        };
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => self.handle(token, req),
            Err(e) => {
                let error = MonitorError::BadRequest {
                    message: format!("not a monitor request: {e}"),
                };
                self.reply(token, Reply::Error { error });
            }
        }
    }

    pub(super) fn client_flush(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        while c.written < c.out.len() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => break,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        c.state = ClientState::Done;
        if c.exit_after {
            self.stop = true;
        }
    }

    /// Sends `reply` to the client `token`, if it is still connected.
    pub(super) fn reply(&mut self, token: u64, reply: Reply) {
        let Some(idx) = self.clients.iter().position(|c| c.token == token) else {
            return;
        };
        let c = &mut self.clients[idx];
        let mut out = match serde_json::to_vec(&reply) {
            Ok(v) => v,
            Err(e) => {
                let error = MonitorError::Protocol {
                    message: format!("cannot encode reply: {e}"),
                };
                serde_json::to_vec(&Reply::Error { error }).unwrap_or_default()
            }
        };
        out.push(b'\n');
        c.out = out;
        c.written = 0;
        c.state = ClientState::Writing;
        c.deadline = Instant::now() + CLIENT_TIMEOUT;
        self.client_flush(idx);
    }

    pub(super) fn handle(&mut self, token: u64, req: Request) {
        let reply = match req {
            Request::Create(req) => match self.create(token, req) {
                Ok(()) => return, // answered when the command exits
                Err(error) => Reply::Error { error },
            },
            Request::ReopenLog { container_id } => match self.reopen_log(&container_id) {
                Ok(()) => Reply::Ok,
                Err(error) => Reply::Error { error },
            },
            Request::List => Reply::Containers {
                containers: self.list(),
            },
            Request::Forget { container_id } => match self.forget(&container_id) {
                Ok(()) => Reply::Ok,
                Err(error) => Reply::Error { error },
            },
            Request::Shutdown => {
                if let Some(c) = self.clients.iter_mut().find(|c| c.token == token) {
                    c.exit_after = true;
                }
                Reply::Ok
            }
            Request::Ping => Reply::Pong {
                pid: std::process::id() as i32,
                protocol: PROTOCOL_VERSION,
            },
            Request::SpawnPause { userns } => match self.spawn_pause(userns.as_deref()) {
                Ok(pid) => Reply::Pause { pid },
                Err(error) => Reply::Error { error },
            },
            Request::Attach {
                container_id,
                stdin,
                stdout,
                stderr,
            } => match self.attach(token, container_id, stdin, stdout, stderr) {
                Ok(()) => return, // the session has begun
                Err(error) => Reply::Error { error },
            },
            Request::Exec(req) => match self.exec(token, req) {
                Ok(()) => return, // answered when the exec command exits
                Err(error) => Reply::Error { error },
            },
        };
        self.reply(token, reply);
    }
}
