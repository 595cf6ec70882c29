//! Runtime state that outlives a config swap: outlier-detection ejections,
//! connection-pool counters, rate-limit buckets and per-pod counters. A new
//! compiled config takes each piece over from the one it replaces (by cluster
//! name, endpoint address, route position and name, pod UID) so that a push
//! neither forgets an ejection nor refills a rate limit nor resets counters.
//!
//! Everything here is atomics; nothing takes a lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dpumesh_api::config::RateLimit;

use crate::metrics::PodCounters;

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Counters of one cluster (Envoy's circuit-breaker gauges), shared by every
/// config version that has a cluster of this name.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Upstream connections opened for this cluster and still open.
    pub connections: AtomicU32,
    /// Requests waiting for a connection (connection limit reached).
    pub pending: AtomicU32,
    /// Requests in flight (until their response body ends).
    pub requests: AtomicU32,
    /// Retries in flight (retry budget).
    pub retries: AtomicU32,
    /// Woken when a connection closes or returns to the pool.
    pub slot_freed: tokio::sync::Notify,
    /// Requests refused by a pool limit (UO).
    pub overflows: AtomicU64,
    /// Ejections by outlier detection, ever.
    pub ejections_total: AtomicU64,
    /// Retries made, ever (Envoy's `upstream_rq_retry`).
    pub retries_total: AtomicU64,
    /// TLS originations that failed their handshake (Envoy's `ssl.connection_error`).
    pub tls_handshake_failures: AtomicU64,
}

/// Outlier-detection state of one endpoint of one cluster.
#[derive(Debug, Default)]
pub struct OutlierState {
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway: AtomicU32,
    /// [`now_ms`] until which the endpoint is ejected (0: never ejected).
    pub ejected_until: AtomicU64,
    /// Ejections so far (decays by one per healthy interval): the ejection
    /// time is `base × ejections`.
    pub ejections: AtomicU32,
}

impl OutlierState {
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }
}

/// A token bucket (Envoy's local rate limit): `max` tokens, `per_fill`
/// added every `interval_ms`, refilled lazily by whoever takes a token.
#[derive(Debug)]
pub struct TokenBucket {
    pub spec: RateLimit,
    tokens: AtomicU64,
    last_fill: AtomicU64,
    pub limited: AtomicU64,
}

impl TokenBucket {
    pub fn new(spec: &RateLimit) -> TokenBucket {
        TokenBucket {
            spec: spec.clone(),
            tokens: AtomicU64::new(spec.max_tokens as u64),
            last_fill: AtomicU64::new(now_ms()),
            limited: AtomicU64::new(0),
        }
    }

    /// Takes a token; false when the bucket is empty.
    pub fn try_take(&self) -> bool {
        let interval = self.spec.fill_interval_ms.max(1);
        let now = now_ms();
        let last = self.last_fill.load(Ordering::Relaxed);
        if now >= last + interval {
            let fills = (now - last) / interval;
            // One taker wins the refill; the others see the new tokens.
            if self
                .last_fill
                .compare_exchange(
                    last,
                    last + fills * interval,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                let add = fills.saturating_mul(self.spec.tokens_per_fill as u64);
                let max = self.spec.max_tokens as u64;
                let _ = self
                    .tokens
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                        Some(t.saturating_add(add).min(max))
                    });
            }
        }
        let ok = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| t.checked_sub(1))
            .is_ok();
        if !ok {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// The state of the config being replaced, indexed for the new compile.
#[derive(Default)]
pub(crate) struct Carry {
    pub clusters: HashMap<String, Arc<ClusterState>>,
    pub endpoints: HashMap<(String, SocketAddr), Arc<OutlierState>>,
    pub pods: HashMap<String, (Arc<PodCounters>, Option<Arc<TokenBucket>>)>,
    /// (route table, virtual host index, route index, route name).
    pub routes: HashMap<(String, usize, usize, String), Arc<TokenBucket>>,
}

impl Carry {
    pub fn cluster(&self, name: &str) -> Arc<ClusterState> {
        self.clusters.get(name).cloned().unwrap_or_default()
    }

    pub fn endpoint(&self, cluster: &str, addr: SocketAddr) -> Arc<OutlierState> {
        self.endpoints
            .get(&(cluster.to_string(), addr))
            .cloned()
            .unwrap_or_default()
    }

    /// The old bucket when its limit is unchanged, else a fresh (full) one.
    pub fn bucket(old: Option<&Arc<TokenBucket>>, spec: &RateLimit) -> Arc<TokenBucket> {
        match old {
            Some(b) if b.spec == *spec => b.clone(),
            _ => Arc::new(TokenBucket::new(spec)),
        }
    }
}
