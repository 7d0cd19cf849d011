//! What the runtime attaches: one container interface in one netns, with its CNI_ARGS and
//! capability arguments.

use std::path::PathBuf;

use crate::error::CniError;
use crate::runtime_config::RuntimeConfig;

/// One attachment of a sandbox to the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID: the sandbox ID (letters, digits, '_', '.', '-'; starting with a letter
    /// or digit).
    pub container_id: String,
    /// CNI_NETNS: the pinned network namespace file. May be empty for DEL when the netns is
    /// already gone.
    pub netns: PathBuf,
    /// CNI_IFNAME: the interface to create in the netns, normally "eth0".
    pub ifname: String,
    /// CNI_ARGS pairs, e.g. from [`Attachment::pod_args`]. `IgnoreUnknown=1` is put first
    /// unless given.
    pub args: Vec<(String, String)>,
    /// Capability arguments, passed to plugins that declare them.
    pub capabilities: RuntimeConfig,
}

impl Attachment {
    /// An `eth0` attachment with no args or capabilities.
    pub fn new(container_id: impl Into<String>, netns: impl Into<PathBuf>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".to_string(),
            args: Vec::new(),
            capabilities: RuntimeConfig::default(),
        }
    }

    /// The CNI_ARGS pairs kubelet's runtimes pass for a pod, in containerd's order:
    /// K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID.
    pub fn pod_args(
        namespace: &str,
        name: &str,
        infra_container_id: &str,
        uid: &str,
    ) -> Vec<(String, String)> {
        [
            ("K8S_POD_NAMESPACE", namespace),
            ("K8S_POD_NAME", name),
            ("K8S_POD_INFRA_CONTAINER_ID", infra_container_id),
            ("K8S_POD_UID", uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The CNI_ARGS value: `IgnoreUnknown=1;K=V;...`.
    pub fn cni_args(&self) -> String {
        format_cni_args(&self.args)
    }

    /// Checks what ends up in the environment and in cache file names.
    pub fn validate(&self) -> Result<(), CniError> {
        let bad = |msg: String| Err(CniError::InvalidArgument(msg));
        let id = &self.container_id;
        let mut chars = id.chars();
        let id_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && id.len() <= 128;
        if !id_ok {
            return bad(format!(
                "container ID {id:?} must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
            ));
        }
        let ifname = &self.ifname;
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
        {
            return bad(format!(
                "interface name {ifname:?} must be 1-15 characters without '/', ':' or spaces"
            ));
        }
        if self.netns.as_os_str().as_encoded_bytes().contains(&0) {
            return bad(format!("netns path {:?} contains a NUL byte", self.netns));
        }
        for (k, v) in &self.args {
            if k.is_empty() || k.contains(['=', ';', '\0']) {
                return bad(format!(
                    "CNI_ARGS key {k:?} must be non-empty without '=', ';'"
                ));
            }
            if v.contains(['=', ';', '\0']) {
                return bad(format!(
                    "CNI_ARGS value {v:?} of {k} must not contain '=' or ';'"
                ));
            }
        }
        Ok(())
    }
}

/// Formats CNI_ARGS pairs, `IgnoreUnknown=1` first unless present (as ocicni).
pub(crate) fn format_cni_args(args: &[(String, String)]) -> String {
    let mut pairs: Vec<String> = Vec::with_capacity(args.len() + 1);
    if !args.iter().any(|(k, _)| k == "IgnoreUnknown") {
        pairs.push("IgnoreUnknown=1".to_string());
    }
    pairs.extend(args.iter().map(|(k, v)| format!("{k}={v}")));
    pairs.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_format() {
        let mut a = Attachment::new("abc", "/run/netns/x");
        assert_eq!(a.cni_args(), "IgnoreUnknown=1");
        a.args = Attachment::pod_args("default", "web-0", "abc", "1234-5678");
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678"
        );
        a.args = vec![
            ("IgnoreUnknown".into(), "true".into()),
            ("K8S_POD_NAME".into(), "p".into()),
        ];
        assert_eq!(a.cni_args(), "IgnoreUnknown=true;K8S_POD_NAME=p");
    }

    #[test]
    fn validation() {
        let ok = Attachment::new("0123abc_.-x", "/run/netns/x");
        assert!(ok.validate().is_ok());
        let mut empty_netns = ok.clone();
        empty_netns.netns = PathBuf::new();
        assert!(empty_netns.validate().is_ok());
        type Change = Box<dyn Fn(&mut Attachment)>;
        let cases: Vec<Change> = vec![
            Box::new(|a| a.container_id = String::new()),
            Box::new(|a| a.container_id = "../../etc".into()),
            Box::new(|a| a.container_id = "-x".into()),
            Box::new(|a| a.container_id = "a/b".into()),
            Box::new(|a| a.container_id = "x".repeat(129)),
            Box::new(|a| a.ifname = String::new()),
            Box::new(|a| a.ifname = "eth0/..".into()),
            Box::new(|a| a.ifname = "..".into()),
            Box::new(|a| a.ifname = "a-very-long-interface".into()),
            Box::new(|a| a.ifname = "eth 0".into()),
            Box::new(|a| a.netns = PathBuf::from("/x\0y")),
            Box::new(|a| a.args = vec![("K".into(), "a;b".into())]),
            Box::new(|a| a.args = vec![("K=".into(), "v".into())]),
            Box::new(|a| a.args = vec![(String::new(), "v".into())]),
            Box::new(|a| a.args = vec![("K".into(), "a=b".into())]),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut a = ok.clone();
            change(&mut a);
            match a.validate() {
                Err(CniError::InvalidArgument(_)) => {}
                other => panic!("case {i}: {other:?}"),
            }
        }
    }
}
