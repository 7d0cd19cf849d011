//! Plugin results (spec 1.0 / 1.1 "Success", also 0.3.x / 0.4.0, which have the same shape
//! plus an ignored `ips[].version`) and the spec's error object.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::version;

/// The typed result of an ADD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The result's spec version.
    pub cni_version: String,
    /// Interfaces created or configured.
    #[serde(default, deserialize_with = "null_default")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, deserialize_with = "null_default")]
    pub ips: Vec<IpConfig>,
    /// Routes added in the sandbox.
    #[serde(default, deserialize_with = "null_default")]
    pub routes: Vec<Route>,
    /// DNS information (informational; the runtime writes resolv.conf itself).
    #[serde(default, deserialize_with = "null_default")]
    pub dns: Dns,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, possibly empty.
    #[serde(default, deserialize_with = "null_default")]
    pub mac: String,
    /// MTU (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the sandbox; empty for a host interface.
    #[serde(default, deserialize_with = "null_default")]
    pub sandbox: String,
    /// vhost-user socket path (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI ID of a device (spec 1.1).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One assigned address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length, e.g. "10.88.0.5/16" (validated on parse).
    pub address: String,
    /// Default gateway for this address, if any.
    #[serde(
        default,
        deserialize_with = "opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        parse_cidr(&self.address).map(|(ip, _)| ip)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> Option<u8> {
        parse_cidr(&self.address).map(|(_, len)| len)
    }
}

/// One route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination in CIDR form (validated on parse).
    pub dst: String,
    /// Next hop; none means the interface's default gateway.
    #[serde(
        default,
        deserialize_with = "opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub gw: Option<IpAddr>,
    /// Route MTU (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS information of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, deserialize_with = "null_default")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, deserialize_with = "null_default")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, deserialize_with = "null_default")]
    pub options: Vec<String>,
}

impl CniResult {
    /// Parses a result. `fallback_version` is used when the result carries no `cniVersion`.
    /// 0.1.x / 0.2.x results (`ip4` / `ip6`, no interface list) are rejected.
    pub fn parse(json: &[u8], fallback_version: &str) -> Result<CniResult, String> {
        parse_value(json, fallback_version).map(|(_, r)| r)
    }

    /// Addresses assigned to interfaces inside the sandbox (an `interface` index whose
    /// `sandbox` is set), IPv4 first, without duplicates. When no address is tied to a
    /// sandbox interface, addresses with no interface index are used instead (some plugins
    /// leave it out).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let in_sandbox = |c: &&IpConfig| {
            c.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| !iface.sandbox.is_empty())
        };
        let mut ips: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(in_sandbox)
            .filter_map(IpConfig::ip)
            .collect();
        if ips.is_empty() {
            ips = self
                .ips
                .iter()
                .filter(|c| c.interface.is_none())
                .filter_map(IpConfig::ip)
                .collect();
        }
        let mut unique: Vec<IpAddr> = Vec::with_capacity(ips.len());
        for ip in ips {
            if !unique.contains(&ip) {
                unique.push(ip);
            }
        }
        // Stable: keeps the plugin's order within a family.
        unique.sort_by_key(|ip| ip.is_ipv6());
        unique
    }
}

/// Parses a plugin's result into its raw JSON (passed on as `prevResult` and cached as is)
/// and the typed view.
pub(crate) fn parse_value(
    json: &[u8],
    fallback_version: &str,
) -> Result<(Value, CniResult), String> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err("empty output".to_string());
    }
    let raw: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = &raw else {
        return Err("not a JSON object".to_string());
    };
    let result_version = match obj.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        None | Some(Value::Null) => fallback_version.to_string(),
        Some(_) => return Err("\"cniVersion\" is not a string".to_string()),
    };
    let Some(parsed) = version::parse(&result_version) else {
        return Err(format!("unknown result version {result_version:?}"));
    };
    if parsed < (0, 3, 0) || obj.contains_key("ip4") || obj.contains_key("ip6") {
        return Err(format!(
            "result version {result_version} is not supported (0.1.x and 0.2.x results are not accepted)"
        ));
    }
    let mut obj = obj.clone();
    obj.insert("cniVersion".into(), Value::String(result_version));
    let result: CniResult =
        serde_json::from_value(Value::Object(obj)).map_err(|e| format!("malformed result: {e}"))?;
    for ip in &result.ips {
        if parse_cidr(&ip.address).is_none() {
            return Err(format!("address {:?} is not in CIDR form", ip.address));
        }
    }
    for route in &result.routes {
        if parse_cidr(&route.dst).is_none() {
            return Err(format!(
                "route destination {:?} is not in CIDR form",
                route.dst
            ));
        }
    }
    Ok((raw, result))
}

/// The spec's error object (`{"cniVersion", "code", "msg", "details"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginErrorJson {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// Reads the spec's error object from a plugin's stdout; `None` when it is not one.
pub(crate) fn parse_error(stdout: &[u8]) -> Option<PluginErrorJson> {
    let value: Value = serde_json::from_slice(stdout).ok()?;
    let obj = value.as_object()?;
    let code = obj.get("code")?.as_u64()?;
    let text = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(PluginErrorJson {
        code: u32::try_from(code).unwrap_or(u32::MAX),
        msg: text("msg"),
        details: text("details"),
    })
}

/// "addr/len" with a prefix length that fits the family.
pub(crate) fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An address that Go may have written as `""` or `null` for "none".
fn opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // What Debian's bridge + host-local + portmap 1.1.1 print for cniVersion 1.0.0.
    const RESULT_1_0: &str = r#"{
      "cniVersion": "1.0.0",
      "interfaces": [
        {"name": "cni0", "mac": "6a:1b:2c:3d:4e:5f"},
        {"name": "veth1234", "mac": "6a:1b:2c:3d:4e:60"},
        {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/berth/pods/abc/net"}
      ],
      "ips": [
        {"interface": 2, "address": "fd00:10:88::5/64", "gateway": "fd00:10:88::1"},
        {"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
        {"interface": 0, "address": "10.88.0.1/16"}
      ],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.88.0.1", "mtu": 1400}],
      "dns": {"nameservers": ["10.96.0.10"], "search": ["cluster.local"]}
    }"#;

    const RESULT_0_4: &str = r#"{
      "cniVersion": "0.4.0",
      "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
      "ips": [{"version": "4", "interface": 0, "address": "10.1.2.3/24", "gateway": ""}],
      "dns": {}
    }"#;

    #[test]
    fn parses_1_0_result() {
        let r = CniResult::parse(RESULT_1_0.as_bytes(), "1.0.0").expect("valid");
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox, "/run/berth/pods/abc/net");
        assert_eq!(r.ips[1].gateway, Some("10.88.0.1".parse().expect("ip")));
        assert_eq!(r.ips[1].prefix_len(), Some(16));
        assert_eq!(r.routes[1].mtu, Some(1400));
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
        let ips: Vec<String> = r.pod_ips().iter().map(ToString::to_string).collect();
        // IPv4 first; the bridge's own address (host side) is not a pod IP.
        assert_eq!(ips, vec!["10.88.0.5", "fd00:10:88::5"]);
    }

    #[test]
    fn parses_0_4_result() {
        let r = CniResult::parse(RESULT_0_4.as_bytes(), "0.4.0").expect("valid");
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.ips[0].gateway, None);
        assert_eq!(r.pod_ips(), vec!["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        // The typed result serializes in the current shape.
        let back = serde_json::to_value(&r).expect("serialize");
        assert!(back["ips"][0].get("version").is_none());
    }

    #[test]
    fn ips_without_interface_index_are_a_fallback() {
        let r = CniResult::parse(
            br#"{"cniVersion":"0.3.1","ips":[{"address":"10.9.0.2/24"},{"address":"10.9.0.2/24"}]}"#,
            "0.3.1",
        )
        .expect("valid");
        assert_eq!(r.pod_ips(), vec!["10.9.0.2".parse::<IpAddr>().expect("ip")]);
        // Out-of-range index: ignored, not a panic.
        let r = CniResult::parse(
            br#"{"cniVersion":"1.0.0","interfaces":[],"ips":[{"interface":7,"address":"10.9.0.2/24"}]}"#,
            "1.0.0",
        )
        .expect("valid");
        assert!(r.pod_ips().is_empty());
    }

    #[test]
    fn missing_version_uses_the_fallback() {
        let r = CniResult::parse(br#"{"ips":[]}"#, "1.0.0").expect("valid");
        assert_eq!(r.cni_version, "1.0.0");
    }

    #[test]
    fn rejects_old_and_malformed_results() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "empty"),
            (b"  \n", "empty"),
            (b"nope", "not JSON"),
            (b"[1]", "not a JSON object"),
            (
                br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#,
                "not supported",
            ),
            (br#"{"ip4":{"ip":"10.0.0.2/24"}}"#, "not supported"),
            (
                br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2"}]}"#,
                "CIDR",
            ),
            (
                br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/33"}]}"#,
                "CIDR",
            ),
            (
                br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","interface":-1}]}"#,
                "malformed",
            ),
        ];
        for (json, want) in cases {
            let err = CniResult::parse(json, "1.0.0").expect_err(want);
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn parses_error_json() {
        let e = parse_error(
            br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate for range 0","details":"no IP addresses available"}"#,
        )
        .expect("error object");
        assert_eq!(
            e,
            PluginErrorJson {
                code: 11,
                msg: "failed to allocate for range 0".into(),
                details: "no IP addresses available".into()
            }
        );
        let e = parse_error(br#"{"code":999999999999,"msg":"big"}"#).expect("error object");
        assert_eq!(e.code, u32::MAX);
        assert_eq!(e.details, "");
        assert!(parse_error(b"plain text").is_none());
        assert!(parse_error(br#"{"msg":"no code"}"#).is_none());
        assert!(parse_error(br#"{"code":"7"}"#).is_none());
    }
}
