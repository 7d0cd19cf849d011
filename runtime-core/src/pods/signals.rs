//! Stop signals (Kubernetes 1.33): CRI's Signal enum, the names images and the OCI spec
//! use (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `SIGRTMAX-2`), and signal numbers.

use berth_cri::v1 as cri;

/// The first real-time signal as programs see it (glibc keeps two for itself), which
/// `SIGRTMIN+n` counts from, as docker's and containerd's signal tables do on Linux.
const RTMIN: i32 = 34;
/// The last real-time signal.
const RTMAX: i32 = 64;

/// The number of signal `name` (with or without `SIG`, any case, or a number), or None
/// for one Linux does not have.
pub fn signal_number(name: &str) -> Option<i32> {
    let s = name.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        let v = base + sign * n;
        (RTMIN..=RTMAX).contains(&v).then_some(v)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return rt(RTMIN, rest.strip_prefix('+').unwrap_or(rest), 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return rt(RTMAX, rest.strip_prefix('-').unwrap_or(rest), -1);
    }
    let alias = match bare {
        "CLD" => "CHLD",
        "POLL" => "IO",
        "IOT" => "ABRT",
        other => other,
    };
    format!("SIG{alias}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|sig| sig as i32)
}

/// The name the OCI spec and kubelet use for signal `n` (`SIGTERM`, `SIGRTMIN+3`).
pub fn signal_name(n: i32) -> Option<String> {
    match n {
        RTMIN..=49 => Some(match n - RTMIN {
            0 => "SIGRTMIN".to_string(),
            k => format!("SIGRTMIN+{k}"),
        }),
        50..=RTMAX => Some(match RTMAX - n {
            0 => "SIGRTMAX".to_string(),
            k => format!("SIGRTMAX-{k}"),
        }),
        _ => nix::sys::signal::Signal::try_from(n)
            .ok()
            .map(|s| s.as_str().to_string()),
    }
}

/// CRI's Signal for signal number `n` (RUNTIME_DEFAULT for none it names).
pub fn cri_signal(n: i32) -> cri::Signal {
    let Some(name) = signal_name(n) else {
        return cri::Signal::RuntimeDefault;
    };
    let enum_name = name.replace('+', "PLUS").replace('-', "MINUS");
    cri::Signal::from_str_name(&enum_name).unwrap_or(cri::Signal::RuntimeDefault)
}

/// The signal a CRI Signal value asks for, or None for RUNTIME_DEFAULT (and values this
/// berth does not know).
pub fn from_cri(value: i32) -> Option<i32> {
    let sig = cri::Signal::try_from(value).ok()?;
    if sig == cri::Signal::RuntimeDefault {
        return None;
    }
    let name = sig.as_str_name().replace("PLUS", "+").replace("MINUS", "-");
    signal_number(&name)
}

/// Checks ContainerConfig.stop_signal (Kubernetes 1.33): RUNTIME_DEFAULT (0) or a signal;
/// any other value is InvalidArgument.
pub fn check_cri(value: i32) -> crate::Result<()> {
    if value == cri::Signal::RuntimeDefault as i32 || from_cri(value).is_some() {
        return Ok(());
    }
    Err(crate::Error::InvalidArgument(format!(
        "stop_signal {value} is not a signal"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_must_be_a_signal() {
        assert!(check_cri(0).is_ok());
        assert!(check_cri(cri::Signal::Sigusr1 as i32).is_ok());
        for bad in [-1, 999, i32::MAX] {
            match check_cri(bad) {
                Err(crate::Error::InvalidArgument(m)) => assert!(m.contains("not a signal"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn names_numbers_and_cri_values_agree() {
        for (name, n) in [
            ("SIGTERM", 15),
            ("term", 15),
            ("15", 15),
            ("SIGKILL", 9),
            ("SIGUSR1", 10),
            ("SIGCLD", 17),
            ("SIGPOLL", 29),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("RTMIN+15", 49),
            ("SIGRTMAX-14", 50),
            ("SIGRTMAX", 64),
        ] {
            assert_eq!(signal_number(name), Some(n), "{name}");
        }
        for bad in ["SIGNOPE", "0", "65", "SIGRTMIN+31", "SIGRTMAX-31", ""] {
            assert_eq!(signal_number(bad), None, "{bad:?}");
        }
        // Every CRI value but RUNTIME_DEFAULT maps to a signal and back (aliases to their
        // canonical value).
        for v in 1..=65 {
            let n = from_cri(v).unwrap_or_else(|| panic!("CRI signal {v}"));
            let back = cri_signal(n) as i32;
            assert_eq!(from_cri(back), Some(n), "CRI signal {v} -> {n} -> {back}");
        }
        assert_eq!(cri_signal(15), cri::Signal::Sigterm);
        assert_eq!(cri_signal(37), cri::Signal::Sigrtminplus3);
        assert_eq!(cri_signal(63), cri::Signal::Sigrtmaxminus1);
        assert_eq!(from_cri(cri::Signal::RuntimeDefault as i32), None);
        assert_eq!(from_cri(999), None);
        assert_eq!(signal_name(37).as_deref(), Some("SIGRTMIN+3"));
        assert_eq!(signal_name(2).as_deref(), Some("SIGINT"));
    }
}
