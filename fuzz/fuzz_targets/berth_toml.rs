//! berth.toml: Config::parse on arbitrary text never panics; an accepted config validates
//! again and its derived values (socket path, idle timeout) are computed without panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_core::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(s, "fuzz") else {
        return;
    };
    assert!(config.validate("fuzz").is_ok());
    let _ = config.socket_path();
    let _ = config.streaming.idle_timeout();
});
