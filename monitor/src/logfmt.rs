//! The CRI container log format: `<RFC 3339 UTC, 9 fractional digits> <stdout|stderr>
//! <F|P> <content>\n`. A line longer than [`MAX_LINE`] bytes is cut into `P` entries of
//! [`MAX_LINE`] bytes followed by the `F` remainder; output that ends without a newline
//! is written as `P` at end of file; a `\r` before the `\n` is dropped (all as containerd's
//! `cri/io/logger.go` does).

/// Longest content of one entry (containerd's and CRI-O's default).
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    /// The stream's name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Nanoseconds since the Unix epoch, from `CLOCK_REALTIME`.
#[allow(clippy::unnecessary_cast)] // time_t and c_long are not i64 everywhere
pub fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as i64)
}

/// Appends `ns` (since the epoch) as `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ`.
pub fn push_timestamp(out: &mut Vec<u8>, ns: i64) {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, sod / 3600, 2);
    out.push(b':');
    push_digits(out, sod / 60 % 60, 2);
    out.push(b':');
    push_digits(out, sod % 60, 2);
    out.push(b'.');
    push_digits(out, nanos, 9);
    out.push(b'Z');
}

fn push_digits(out: &mut Vec<u8>, value: i64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut v = value.unsigned_abs();
    let mut i = buf.len();
    while v > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = (buf.len() - width).min(i);
    out.extend_from_slice(&buf[start..]);
}

/// Cuts `buf` into log entries, calling `emit(full, content)` for each, and returns how
/// many bytes were consumed. Without `eof`, an unterminated tail of at most [`MAX_LINE`]
/// bytes stays unconsumed (it waits for more data); with `eof` it is emitted as partial.
pub fn split_entries(buf: &[u8], eof: bool, mut emit: impl FnMut(bool, &[u8])) -> usize {
    let mut start = 0;
    while start < buf.len() {
        let rest = &buf[start..];
        let window = &rest[..rest.len().min(MAX_LINE + 1)];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                emit(true, line);
                start += i + 1;
            }
            None if rest.len() > MAX_LINE => {
                emit(false, &rest[..MAX_LINE]);
                start += MAX_LINE;
            }
            None if eof => {
                emit(false, rest);
                start = buf.len();
            }
            None => break,
        }
    }
    start
}

/// Appends one entry to `out`: `<timestamp> <stream> <F|P> <content>\n`. Writing it is
/// [`crate::logsink::LogSink`]'s job.
pub fn format_entry(out: &mut Vec<u8>, ts_ns: i64, stream: Stream, full: bool, content: &[u8]) {
    push_timestamp(out, ts_ns);
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ns: i64) -> String {
        let mut v = Vec::new();
        push_timestamp(&mut v, ns);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn timestamps() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            ts(1_000_000_000 * 951_782_400 + 5),
            "2000-02-29T00:00:00.000000005Z"
        );
        // 2026-11-22T17:03:24.123456789Z
        assert_eq!(
            ts(1_795_367_004_123_456_789),
            "2026-11-22T17:03:24.123456789Z"
        );
        assert_eq!(ts(i64::MAX), "2262-04-11T23:47:16.854775807Z");
    }

    fn split(data: &[u8], eof: bool) -> (Vec<(bool, Vec<u8>)>, usize) {
        let mut out = Vec::new();
        let n = split_entries(data, eof, |full, c| out.push((full, c.to_vec())));
        (out, n)
    }

    #[test]
    fn splitting() {
        let (e, n) = split(b"a\nbc\r\nde", false);
        assert_eq!(e, vec![(true, b"a".to_vec()), (true, b"bc".to_vec())]);
        assert_eq!(n, 6);
        let (e, n) = split(b"de", true);
        assert_eq!(e, vec![(false, b"de".to_vec())]);
        assert_eq!(n, 2);
        let exact = vec![b'x'; MAX_LINE];
        let (e, n) = split(&exact, false);
        assert!(e.is_empty());
        assert_eq!(n, 0);
        let mut line = exact.clone();
        line.push(b'\n');
        let (e, _) = split(&line, false);
        assert_eq!(e, vec![(true, exact.clone())]);
        let mut long = vec![b'y'; 40 * 1024];
        long.push(b'\n');
        let (e, n) = split(&long, false);
        assert_eq!(n, long.len());
        assert_eq!(
            e.iter().map(|(f, c)| (*f, c.len())).collect::<Vec<_>>(),
            vec![
                (false, MAX_LINE),
                (false, MAX_LINE),
                (true, 40 * 1024 - 2 * MAX_LINE)
            ]
        );
        let (e, _) = split(b"\n\n", false);
        assert_eq!(e, vec![(true, vec![]), (true, vec![])]);
    }
}
