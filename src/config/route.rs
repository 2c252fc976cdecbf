//! One `routes:` entry as the router reads it.

/// One `routes:` entry, with its pool resolved to an index at load.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub pool: usize,
    pub pool_name: String,
    pub strip_prefix: bool,
    /// Pools tried in order when the primary cannot serve.
    pub fallbacks: Vec<usize>,
    /// The endpoints the route serves (`routes[].endpoints`; all when absent).
    pub endpoints: crate::endpoint::EndpointSet,
    /// Callers' own bearer tokens are accepted and forwarded (`credentials: passthrough`).
    pub anonymous: bool,
    /// Each anonymous caller's limits on this route.
    pub limits: super::Limits,
}
