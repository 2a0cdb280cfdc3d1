//! How a node reaches its peers: the cluster links (ractor_cluster, or the
//! simulation's network), the wire format, the Gateway that receives
//! frames, and mutual TLS.

pub mod gateway;
pub mod links;
pub mod tls;
pub mod tls_listener;
pub mod wire;
