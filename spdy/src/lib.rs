//! SPDY/3.1 as Kubernetes streaming (remotecommand and port-forward) speaks it.
