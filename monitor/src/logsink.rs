//! Writing CRI log entries to a log file that may be full.
//!
//! A full log volume (ENOSPC, EDQUOT, or any other write error) must never stop or block
//! the container: the monitor keeps draining its pipes and drops what it cannot write.
//! [`LogSink`] does the bookkeeping. It counts what is lost, keeps the file made of whole
//! entries only (the bytes of an entry that was written short are cut off again), closes a
//! line left open by a partial (`P`) entry before the gap with an empty `F` entry, and tries
//! again once per batch of output (one `write(2)` per read of a pipe while the file is
//! full, not one per line). The caller is told when a gap starts and when it ends, with the
//! counts, to report them.

use std::fs::File;
use std::io::{self, Write};

use crate::logfmt::{self, Stream};

/// The file end of a [`LogSink`]: a trait so that tests can inject a failing file.
pub trait LogFile {
    /// One `write(2)`: may write short.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Cuts the last `n` bytes off the file (an entry that was written short).
    fn truncate_tail(&mut self, n: u64) -> io::Result<()>;
}

impl LogFile for &File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn truncate_tail(&mut self, n: u64) -> io::Result<()> {
        let len = self.metadata()?.len();
        self.set_len(len.saturating_sub(n))
    }
}

/// A change in whether the log can be written, for the caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Writes started failing; output is dropped from now on.
    GapStarted {
        /// The first error.
        error: String,
    },
    /// Writes succeed again after a gap.
    GapEnded {
        /// Bytes of container output lost in this gap.
        lost_bytes: u64,
        /// Log entries (lines or parts of lines) lost in this gap.
        lost_entries: u64,
        /// The first error of the gap.
        error: String,
    },
}

/// Losses since the log last failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gap {
    /// Bytes of container output lost.
    pub lost_bytes: u64,
    /// Entries lost.
    pub lost_entries: u64,
    /// The error that started the gap.
    pub error: String,
    /// A write was tried in the current batch (and failed).
    tried: bool,
}

/// The write side of one container's log.
#[derive(Debug, Default)]
pub struct LogSink {
    /// Set while writes fail.
    gap: Option<Gap>,
    /// Per stream (stdout, stderr): the last entry written was partial (`P`).
    open_line: [bool; 2],
    /// Per stream: an open line lost its continuation, so it must be closed before the
    /// stream's next entry.
    needs_close: [bool; 2],
    /// The file may end in the middle of an entry (cutting a short write off failed): the
    /// next write begins with a newline.
    dangling: bool,
    /// Totals over the container's life.
    total_lost_bytes: u64,
    total_lost_entries: u64,
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl LogSink {
    /// The current gap, if writes fail.
    pub fn gap(&self) -> Option<&Gap> {
        self.gap.as_ref()
    }

    /// Bytes and entries lost over the sink's life.
    pub fn total_lost(&self) -> (u64, u64) {
        (self.total_lost_bytes, self.total_lost_entries)
    }

    /// Starts a batch of entries (the output of one read): while in a gap, one write is
    /// tried per batch.
    fn begin_batch(&mut self) {
        if let Some(g) = &mut self.gap {
            g.tried = false;
        }
    }

    /// The log file was reopened (a new file): nothing of the old one is left dangling.
    pub fn reopened(&mut self) {
        self.dangling = false;
    }

    /// Writes the entries of one read (`buf`, a pipe's pending output; see
    /// [`logfmt::split_entries`]) and returns how much of `buf` they took. One write for
    /// all of them while the log is healthy, the same bytes as one write per entry; when
    /// that write fails (its part is cut off again), and while in a gap, entry by entry, so
    /// that what fits is written and the rest counted lost exactly as [`Self::entry`] does.
    /// Each transition into or out of a gap goes to `transition`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_batch(
        &mut self,
        file: &mut impl LogFile,
        scratch: &mut Vec<u8>,
        ts_ns: i64,
        stream: Stream,
        buf: &[u8],
        eof: bool,
        mut transition: impl FnMut(Transition),
    ) -> usize {
        self.begin_batch();
        let s = index(stream);
        if self.gap.is_none() && !self.dangling && !self.needs_close[s] {
            scratch.clear();
            let mut last_full = None;
            let consumed = logfmt::split_entries(buf, eof, |full, content| {
                logfmt::format_entry(scratch, ts_ns, stream, full, content);
                last_full = Some(full);
            });
            let Some(full) = last_full else {
                return consumed;
            };
            match write_whole(file, scratch) {
                Ok(()) => {
                    self.open_line[s] = !full;
                    return consumed;
                }
                Err((_, cut)) => {
                    if !cut {
                        self.dangling = true;
                    }
                }
            }
        }
        logfmt::split_entries(buf, eof, |full, content| {
            if let Some(t) = self.entry(file, scratch, ts_ns, stream, full, content) {
                transition(t);
            }
        })
    }

    /// Writes one entry, or counts it lost. Returns a transition when the entry started or
    /// ended a gap.
    pub fn entry(
        &mut self,
        file: &mut impl LogFile,
        scratch: &mut Vec<u8>,
        ts_ns: i64,
        stream: Stream,
        full: bool,
        content: &[u8],
    ) -> Option<Transition> {
        let s = index(stream);
        if self.gap.as_ref().is_some_and(|g| g.tried) {
            self.lose(stream, content);
            return None;
        }
        scratch.clear();
        if self.dangling {
            scratch.push(b'\n');
        }
        if self.needs_close[s] {
            logfmt::format_entry(scratch, ts_ns, stream, true, b"");
        }
        logfmt::format_entry(scratch, ts_ns, stream, full, content);
        match write_whole(file, scratch) {
            Ok(()) => {
                self.dangling = false;
                self.needs_close[s] = false;
                self.open_line[s] = !full;
                self.gap.take().map(|g| Transition::GapEnded {
                    lost_bytes: g.lost_bytes,
                    lost_entries: g.lost_entries,
                    error: g.error,
                })
            }
            Err((e, cut)) => {
                if !cut {
                    self.dangling = true;
                }
                let started = match &mut self.gap {
                    Some(g) => {
                        g.tried = true;
                        None
                    }
                    None => {
                        self.gap = Some(Gap {
                            error: e.to_string(),
                            tried: true,
                            ..Gap::default()
                        });
                        Some(Transition::GapStarted {
                            error: e.to_string(),
                        })
                    }
                };
                self.lose(stream, content);
                started
            }
        }
    }

    fn lose(&mut self, stream: Stream, content: &[u8]) {
        let s = index(stream);
        if self.open_line[s] {
            self.needs_close[s] = true;
            self.open_line[s] = false;
        }
        if let Some(g) = &mut self.gap {
            g.lost_bytes += content.len() as u64;
            g.lost_entries += 1;
        }
        self.total_lost_bytes += content.len() as u64;
        self.total_lost_entries += 1;
    }
}

/// Writes all of `buf` (repeating short writes) or, on an error, cuts what was written off
/// again. The error comes with whether the file is whole (nothing or everything cut).
fn write_whole(file: &mut impl LogFile, buf: &[u8]) -> Result<(), (io::Error, bool)> {
    let mut off = 0;
    while off < buf.len() {
        match file.write(&buf[off..]) {
            Ok(0) => return Err(undo(file, off, io::ErrorKind::WriteZero.into())),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(undo(file, off, e)),
        }
    }
    Ok(())
}

fn undo(file: &mut impl LogFile, written: usize, e: io::Error) -> (io::Error, bool) {
    if written == 0 {
        return (e, true);
    }
    let cut = file.truncate_tail(written as u64).is_ok();
    (e, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory log file with a capacity: writes beyond it are short, then ENOSPC.
    struct Full {
        data: Vec<u8>,
        cap: usize,
        writes: usize,
    }

    impl LogFile for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            let room = self.cap.saturating_sub(self.data.len());
            if room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = room.min(buf.len());
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn truncate_tail(&mut self, n: u64) -> io::Result<()> {
            let len = self.data.len().saturating_sub(n as usize);
            self.data.truncate(len);
            Ok(())
        }
    }

    fn lines(f: &Full) -> Vec<String> {
        String::from_utf8(f.data.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `<ts> <stream> <P|F> <content>` for every line.
    fn assert_valid(f: &Full) {
        assert!(
            f.data.is_empty() || f.data.ends_with(b"\n"),
            "ends mid-line"
        );
        for l in lines(f) {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert_eq!(ts.len(), 30, "{l:?}");
            assert!(ts.ends_with('Z'), "{l:?}");
            assert!(matches!(parts.next(), Some("stdout" | "stderr")), "{l:?}");
            assert!(matches!(parts.next(), Some("P" | "F")), "{l:?}");
            assert!(parts.next().is_some(), "{l:?}");
        }
    }

    /// The old way: every entry of a read written on its own.
    fn per_entry(
        sink: &mut LogSink,
        f: &mut Full,
        scratch: &mut Vec<u8>,
        ts: i64,
        buf: &[u8],
    ) -> usize {
        sink.begin_batch();
        logfmt::split_entries(buf, false, |full, content| {
            sink.entry(f, scratch, ts, Stream::Stdout, full, content);
        })
    }

    #[test]
    fn a_batch_writes_once_and_what_entry_by_entry_writing_would() {
        // Reads of lines, a long line split into a partial entry, then more lines.
        let mut reads: Vec<Vec<u8>> = Vec::new();
        for r in 0..6u8 {
            let mut b = Vec::new();
            for i in 0..20u8 {
                b.extend_from_slice(format!("read {r} line {i}\n").as_bytes());
            }
            if r == 2 {
                b.extend(std::iter::repeat_n(b'x', logfmt::MAX_LINE + 10));
            }
            reads.push(b);
        }
        for cap in [0, 50, 333, 1000, 5000, 20_000, 1 << 20] {
            let mut a = Full {
                data: Vec::new(),
                cap,
                writes: 0,
            };
            let mut b = Full {
                data: Vec::new(),
                cap,
                writes: 0,
            };
            let (mut sa, mut sb) = (LogSink::default(), LogSink::default());
            let (mut xa, mut xb) = (Vec::new(), Vec::new());
            let (mut pa, mut pb) = (Vec::new(), Vec::new());
            let mut transitions = 0;
            for (i, r) in reads.iter().enumerate() {
                pa.extend_from_slice(r);
                pb.extend_from_slice(r);
                // Room again half way through: both resume the same way.
                if i == 3 {
                    a.cap = 1 << 20;
                    b.cap = 1 << 20;
                }
                let ca = sa.write_batch(&mut a, &mut xa, 7, Stream::Stdout, &pa, false, |_| {
                    transitions += 1
                });
                let cb = per_entry(&mut sb, &mut b, &mut xb, 7, &pb);
                assert_eq!(ca, cb, "cap {cap}: consumed");
                pa.drain(..ca);
                pb.drain(..cb);
            }
            assert_eq!(a.data, b.data, "cap {cap}: the same bytes");
            assert_eq!(
                sa.total_lost(),
                sb.total_lost(),
                "cap {cap}: the same losses"
            );
            assert_valid(&a);
            if cap == 1 << 20 {
                assert_eq!(a.writes, reads.len(), "one write per read while healthy");
                assert_eq!(transitions, 0);
            }
        }
    }

    #[test]
    fn a_full_file_drops_and_counts_then_resumes_with_whole_entries() {
        let mut f = Full {
            data: Vec::new(),
            cap: 100,
            writes: 0,
        };
        let mut sink = LogSink::default();
        let mut scratch = Vec::new();
        sink.begin_batch();
        assert_eq!(
            sink.entry(&mut f, &mut scratch, 1, Stream::Stdout, true, b"first"),
            None
        );
        // 46 bytes used; this 71-byte entry is written short, then cut off again.
        let t = sink.entry(&mut f, &mut scratch, 2, Stream::Stdout, true, &[b'x'; 30]);
        assert!(matches!(t, Some(Transition::GapStarted { .. })), "{t:?}");
        assert_eq!(lines(&f).len(), 1);
        assert_valid(&f);
        // Nothing fits any more.
        f.cap = f.data.len();
        // The rest of the batch costs no writes.
        let writes = f.writes;
        for _ in 0..10 {
            assert_eq!(
                sink.entry(&mut f, &mut scratch, 3, Stream::Stderr, true, b"yy"),
                None
            );
        }
        assert_eq!(f.writes, writes);
        // Next batch: one try, still full.
        sink.begin_batch();
        assert_eq!(
            sink.entry(&mut f, &mut scratch, 4, Stream::Stdout, true, b"z"),
            None
        );
        assert_eq!(f.writes, writes + 1);
        let gap = sink.gap().unwrap();
        assert_eq!((gap.lost_bytes, gap.lost_entries), (30 + 20 + 1, 12));
        // Space returns.
        f.cap = 10_000;
        sink.begin_batch();
        let t = sink.entry(&mut f, &mut scratch, 5, Stream::Stdout, true, b"after");
        assert_eq!(
            t,
            Some(Transition::GapEnded {
                lost_bytes: 51,
                lost_entries: 12,
                error: io::Error::from_raw_os_error(libc::ENOSPC).to_string(),
            })
        );
        assert!(sink.gap().is_none());
        assert_eq!(sink.total_lost(), (51, 12));
        assert_valid(&f);
        let l = lines(&f);
        assert_eq!(l.len(), 2);
        assert!(l[0].ends_with(" stdout F first"));
        assert!(l[1].ends_with(" stdout F after"));
    }

    #[test]
    fn a_line_left_open_by_the_gap_is_closed_before_the_next_entry() {
        let mut f = Full {
            data: Vec::new(),
            cap: 1000,
            writes: 0,
        };
        let mut sink = LogSink::default();
        let mut scratch = Vec::new();
        sink.begin_batch();
        sink.entry(&mut f, &mut scratch, 1, Stream::Stdout, false, b"start-of-");
        f.cap = f.data.len();
        sink.begin_batch();
        let t = sink.entry(&mut f, &mut scratch, 2, Stream::Stdout, true, b"line");
        assert!(matches!(t, Some(Transition::GapStarted { .. })));
        f.cap = 10_000;
        sink.begin_batch();
        let t = sink.entry(&mut f, &mut scratch, 3, Stream::Stdout, true, b"next");
        assert!(matches!(
            t,
            Some(Transition::GapEnded {
                lost_entries: 1,
                ..
            })
        ));
        assert_valid(&f);
        let l = lines(&f);
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[0].ends_with(" stdout P start-of-"));
        assert!(
            l[1].ends_with(" stdout F "),
            "the open line is closed: {l:?}"
        );
        assert!(l[2].ends_with(" stdout F next"));
    }

    #[test]
    fn a_short_write_that_cannot_be_cut_off_is_terminated_by_the_next_write() {
        struct NoTruncate(Full);
        impl LogFile for NoTruncate {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn truncate_tail(&mut self, _: u64) -> io::Result<()> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let mut f = NoTruncate(Full {
            data: Vec::new(),
            cap: 10,
            writes: 0,
        });
        let mut sink = LogSink::default();
        let mut scratch = Vec::new();
        sink.begin_batch();
        sink.entry(&mut f, &mut scratch, 1, Stream::Stdout, true, b"cut");
        f.0.cap = 10_000;
        sink.begin_batch();
        sink.entry(&mut f, &mut scratch, 2, Stream::Stdout, true, b"whole");
        let text = String::from_utf8(f.0.data.clone()).unwrap();
        let l: Vec<&str> = text.lines().collect();
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(l[1].ends_with(" stdout F whole"), "{l:?}");
    }
}
