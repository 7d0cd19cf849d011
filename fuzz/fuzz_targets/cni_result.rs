//! CNI plugin results and network configs (conflists and single-plugin confs): parsing
//! arbitrary bytes never panics; pod IPs of a result are unique, IPv4 first; a parsed
//! list has plugins and survives its own JSON form.
#![no_main]

use cni::{CniResult, NetworkConfigList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = CniResult::parse(data, "1.0.0") {
        let ips = r.pod_ips();
        for (i, ip) in ips.iter().enumerate() {
            assert!(!ips[i + 1..].contains(ip));
        }
        assert!(ips.windows(2).all(|w| w[0].is_ipv4() || w[1].is_ipv6()));
        for c in &r.ips {
            let _ = (c.ip(), c.prefix_len());
        }
    }
    for list in [
        NetworkConfigList::from_list_json(data),
        NetworkConfigList::from_plugin_json(data),
    ]
    .into_iter()
    .flatten()
    {
        let value = list.to_value();
        let again = NetworkConfigList::from_list_value(value.clone());
        assert_eq!(again.as_ref().ok(), Some(&list), "{value}: {again:?}");
    }
});
