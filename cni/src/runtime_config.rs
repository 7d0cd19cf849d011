//! Capability arguments (CONVENTIONS.md "Dynamic plugin specific fields"): what the runtime
//! passes in `runtimeConfig` to plugins that declare the capability.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Capability key for host port mappings (portmap).
pub const CAP_PORT_MAPPINGS: &str = "portMappings";
/// Capability key for the pod's DNS settings.
pub const CAP_DNS: &str = "dns";
/// Capability key for traffic shaping (bandwidth).
pub const CAP_BANDWIDTH: &str = "bandwidth";
/// Capability key for IPAM ranges (host-local), e.g. the node's pod CIDR.
pub const CAP_IP_RANGES: &str = "ipRanges";
/// Capability key for the pod's cgroup path.
pub const CAP_CGROUP_PATH: &str = "cgroupPath";

/// The capability arguments of one attachment. A plugin receives in `runtimeConfig` only
/// the keys it declares in its `capabilities` and that are set here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// Host port mappings (`portMappings`). Mappings with a host port of 0 or less are not
    /// passed, as containerd.
    pub port_mappings: Vec<PortMapping>,
    /// DNS settings (`dns`).
    pub dns: Option<DnsConfig>,
    /// Traffic shaping (`bandwidth`).
    pub bandwidth: Option<Bandwidth>,
    /// IPAM range sets (`ipRanges`): each inner list is one range set.
    pub ip_ranges: Vec<Vec<IpRange>>,
    /// The pod's cgroup path (`cgroupPath`).
    pub cgroup_path: Option<String>,
}

/// One host port mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the host (CRI's `host_port`).
    pub host_port: i32,
    /// Port in the pod.
    pub container_port: i32,
    /// "tcp", "udp" or "sctp" (any case; passed lowercased).
    pub protocol: String,
    /// Host address to bind; empty means every address.
    pub host_ip: String,
}

/// DNS settings passed to plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// Traffic shaping, in bits per second and bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Ingress rate, bit/s.
    pub ingress_rate: u64,
    /// Ingress burst, bits.
    pub ingress_burst: u64,
    /// Egress rate, bit/s.
    pub egress_rate: u64,
    /// Egress burst, bits.
    pub egress_burst: u64,
}

/// One IPAM range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    /// The subnet in CIDR form.
    pub subnet: String,
    /// First address to hand out.
    pub range_start: Option<String>,
    /// Last address to hand out.
    pub range_end: Option<String>,
    /// The gateway address.
    pub gateway: Option<String>,
}

impl RuntimeConfig {
    /// The capability arguments in their wire form, keyed by capability name; absent or
    /// empty settings are left out.
    pub fn capability_args(&self) -> Map<String, Value> {
        let mut args = Map::new();
        let ports: Vec<Value> = self
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let mut m = Map::new();
                m.insert("hostPort".into(), p.host_port.into());
                m.insert("containerPort".into(), p.container_port.into());
                let protocol = if p.protocol.is_empty() {
                    "tcp".to_string()
                } else {
                    p.protocol.to_ascii_lowercase()
                };
                m.insert("protocol".into(), protocol.into());
                if !p.host_ip.is_empty() {
                    m.insert("hostIP".into(), p.host_ip.clone().into());
                }
                Value::Object(m)
            })
            .collect();
        if !ports.is_empty() {
            args.insert(CAP_PORT_MAPPINGS.into(), Value::Array(ports));
        }
        if let Some(dns) = &self.dns {
            let mut m = Map::new();
            m.insert("servers".into(), strings(&dns.servers));
            m.insert("searches".into(), strings(&dns.searches));
            m.insert("options".into(), strings(&dns.options));
            args.insert(CAP_DNS.into(), Value::Object(m));
        }
        if let Some(bw) = &self.bandwidth {
            let mut m = Map::new();
            m.insert("ingressRate".into(), bw.ingress_rate.into());
            m.insert("ingressBurst".into(), bw.ingress_burst.into());
            m.insert("egressRate".into(), bw.egress_rate.into());
            m.insert("egressBurst".into(), bw.egress_burst.into());
            args.insert(CAP_BANDWIDTH.into(), Value::Object(m));
        }
        let sets: Vec<Value> = self
            .ip_ranges
            .iter()
            .filter(|set| !set.is_empty())
            .map(|set| Value::Array(set.iter().map(range_value).collect()))
            .collect();
        if !sets.is_empty() {
            args.insert(CAP_IP_RANGES.into(), Value::Array(sets));
        }
        if let Some(path) = &self.cgroup_path {
            args.insert(CAP_CGROUP_PATH.into(), path.clone().into());
        }
        args
    }
}

fn strings(list: &[String]) -> Value {
    Value::Array(list.iter().cloned().map(Value::String).collect())
}

fn range_value(r: &IpRange) -> Value {
    let mut m = Map::new();
    m.insert("subnet".into(), r.subnet.clone().into());
    for (key, value) in [
        ("rangeStart", &r.range_start),
        ("rangeEnd", &r.range_end),
        ("gateway", &r.gateway),
    ] {
        if let Some(v) = value {
            m.insert(key.into(), v.clone().into());
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_config_has_no_args() {
        assert!(RuntimeConfig::default().capability_args().is_empty());
    }

    #[test]
    fn wire_form() {
        let rc = RuntimeConfig {
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "TCP".into(),
                    host_ip: "127.0.0.1".into(),
                },
                PortMapping {
                    host_port: 0,
                    container_port: 53,
                    protocol: "UDP".into(),
                    host_ip: String::new(),
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "UDP".into(),
                    host_ip: String::new(),
                },
            ],
            dns: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            bandwidth: Some(Bandwidth {
                ingress_rate: 1_000_000,
                ingress_burst: 2_000_000,
                egress_rate: 3,
                egress_burst: 4,
            }),
            ip_ranges: vec![
                vec![IpRange {
                    subnet: "10.244.1.0/24".into(),
                    range_start: Some("10.244.1.10".into()),
                    range_end: None,
                    gateway: Some("10.244.1.1".into()),
                }],
                vec![],
            ],
            cgroup_path: Some("/kubepods/pod1".into()),
        };
        assert_eq!(
            Value::Object(rc.capability_args()),
            json!({
                "portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                    {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
                ],
                "dns": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]},
                "bandwidth": {"ingressRate": 1000000, "ingressBurst": 2000000, "egressRate": 3, "egressBurst": 4},
                "ipRanges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "gateway": "10.244.1.1"}]],
                "cgroupPath": "/kubepods/pod1"
            })
        );
    }
}
