//! The Container Runtime Interface, v1, at the Kubernetes 1.36 level: messages, clients and
//! servers generated at build time from berth's own `proto/cri/runtime/v1/api.proto`.
//!
//! ```text
//! use berth_cri::v1 as cri;
//! impl cri::runtime_service_server::RuntimeService for Daemon { /* ... */ }
//! ```
//!
//! Besides prost's and tonic's code every type derives serde's `Serialize` / `Deserialize`
//! (records on disk hold `PodSandboxConfig` and `ContainerConfig`), and every message is
//! `#[serde(default)]` so a record written by an older berth still loads.

/// package runtime.v1
#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

impl std::fmt::Debug for v1::AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn secret(s: &str) -> &'static str {
            if s.is_empty() { "" } else { "<redacted>" }
        }
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("auth", &secret(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &secret(&self.identity_token))
            .field("registry_token", &secret(&self.registry_token))
            .finish()
    }
}

/// serde for `KeyValue.value` (proto `bytes` since cri-api 0.36.3, a string before): a JSON
/// string when the bytes are UTF-8 (always, for records written before the change), an array
/// of numbers otherwise. Both forms are accepted.
mod bytes_as_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(v),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Raw(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::Text(t) => t.into_bytes(),
            Either::Raw(b) => b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn key_value_json_is_a_string_and_old_records_load() {
        let kv = v1::KeyValue {
            key: "A".into(),
            value: b"b c".to_vec(),
        };
        assert_eq!(
            serde_json::to_string(&kv).unwrap(),
            r#"{"key":"A","value":"b c"}"#
        );
        let back: v1::KeyValue = serde_json::from_str(r#"{"key":"A","value":"b c"}"#).unwrap();
        assert_eq!(back, kv);

        let raw = v1::KeyValue {
            key: "B".into(),
            value: vec![0xff, 0x00],
        };
        let json = serde_json::to_string(&raw).unwrap();
        assert_eq!(json, r#"{"key":"B","value":[255,0]}"#);
        assert_eq!(serde_json::from_str::<v1::KeyValue>(&json).unwrap(), raw);
    }

    #[test]
    fn a_record_without_the_1_33_fields_loads() {
        let c: v1::ContainerConfig =
            serde_json::from_str(r#"{"metadata":{"name":"c","attempt":0},"tty":true}"#).unwrap();
        assert!(c.tty);
        assert_eq!(c.stop_signal, v1::Signal::RuntimeDefault as i32);
    }

    #[test]
    fn auth_config_debug_redacts_secrets() {
        let a = v1::AuthConfig {
            username: "u".into(),
            password: "hunter2".into(),
            registry_token: "tok".into(),
            ..Default::default()
        };
        let s = format!("{a:?}");
        assert!(s.contains("\"u\"") && s.contains("<redacted>"), "{s}");
        assert!(!s.contains("hunter2") && !s.contains("tok\""), "{s}");
    }

    #[test]
    fn rust_names_the_daemon_relies_on() {
        let _ = v1::ContainerState::ContainerRunning;
        let _ = v1::PodSandboxState::SandboxReady;
        let _ = v1::security_profile::ProfileType::Localhost;
        let _ = v1::SupplementalGroupsPolicy::Strict;
        let _: Option<v1::IoUsage> = v1::ContainerStats::default().io;
        let _: Option<v1::PsiStats> = v1::CpuUsage::default().psi;
    }
}
