//! The CRI log line writer, driven as the monitor drives it: chunks of container output
//! are appended to a pending buffer, split into entries (`split_entries`) and written with
//! `format_entry` to a file; at the end the stream hits EOF. Every line written must be
//! `<RFC 3339 timestamp, 9 fractional digits, Z> <stdout|stderr> <P|F> <content>` with the
//! timestamp given, content at most MAX_LINE bytes, and the contents (F adding the newline)
//! must give back the input, `\r` aside (a `\r` before a newline is dropped).
//!
//! Input: `ts: i64 LE, flags: u8` (bit 0: stderr) then chunks `len: u16 BE, bytes[len]`;
//! a length with the top bit set is a run of `len & 0x7fff` copies of the next byte, so
//! small inputs reach lines above MAX_LINE.
#![no_main]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use berth_monitor::logfmt::{self, MAX_LINE, Stream};
use libfuzzer_sys::fuzz_target;

fn log_file() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        // SAFETY: memfd_create takes a NUL-terminated name; the fd returned is ours.
        let fd = unsafe { libc::memfd_create(c"fuzz-log".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nothing else owns.
        unsafe { File::from_raw_fd(fd) }
    })
}

fn chunks(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if len & 0x8000 != 0 {
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            out.push(vec![b; len & 0x7fff]);
            rest = tail;
        } else {
            let len = len.min(rest.len());
            out.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
    }
    out
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ` strictly and returns its nanoseconds.
fn parse_timestamp(ts: &[u8]) -> Option<i128> {
    if ts.len() != 30 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &ts[r];
        s.iter().all(u8::is_ascii_digit).then(|| {
            s.iter()
                .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'))
        })
    };
    for (i, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (29, b'Z'),
    ] {
        if ts[i] != sep {
            return None;
        }
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, n) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..29)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let secs = i128::from(days_from_civil(y, mo, d)) * 86_400 + i128::from(h * 3600 + mi * 60 + s);
    Some(secs * 1_000_000_000 + i128::from(n))
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<9>() else {
        return;
    };
    // Every i64 is a time in 1677..2262: four-digit years, as RFC 3339 wants.
    let ts = i64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let stream = if head[8] & 1 == 0 {
        Stream::Stdout
    } else {
        Stream::Stderr
    };

    let mut file = log_file();
    file.set_len(0).expect("truncate");
    file.seek(SeekFrom::Start(0)).expect("seek");
    let mut scratch = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut input: Vec<u8> = Vec::new();
    let mut write = |pending: &[u8], eof: bool| {
        logfmt::split_entries(pending, eof, |full, content| {
            scratch.clear();
            logfmt::format_entry(&mut scratch, ts, stream, full, content);
            (&*file).write_all(&scratch).expect("write to a memfd");
        })
    };
    for chunk in chunks(rest) {
        input.extend_from_slice(&chunk);
        pending.extend_from_slice(&chunk);
        let used = write(&pending, false);
        assert!(used <= pending.len());
        pending.drain(..used);
        assert!(pending.len() <= MAX_LINE && !pending.contains(&b'\n'));
    }
    let used = write(&pending, true);
    assert_eq!(used, pending.len(), "everything is written at EOF");

    let mut log = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.read_to_end(&mut log).expect("read back");
    assert!(log.is_empty() || log.ends_with(b"\n"));
    let mut rebuilt = Vec::new();
    for line in log.split_inclusive(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\n")
            .expect("every entry ends with a newline");
        let mut parts = line.splitn(4, |&b| b == b' ');
        let (Some(t), Some(s), Some(tag), Some(content)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!(
                "entry {:?} has fewer than four fields",
                String::from_utf8_lossy(line)
            );
        };
        assert_eq!(
            parse_timestamp(t),
            Some(i128::from(ts)),
            "{:?}",
            String::from_utf8_lossy(t)
        );
        assert_eq!(s, stream.name().as_bytes());
        assert!(content.len() <= MAX_LINE);
        rebuilt.extend_from_slice(content);
        match tag {
            b"F" => rebuilt.push(b'\n'),
            b"P" => {}
            _ => panic!("tag {:?}", String::from_utf8_lossy(tag)),
        }
    }
    input.retain(|&b| b != b'\r');
    rebuilt.retain(|&b| b != b'\r');
    assert!(input == rebuilt, "contents do not give back the input");
});
