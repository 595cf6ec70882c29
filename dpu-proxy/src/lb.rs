//! Load balancing: picking one endpoint of a priority level of a cluster, and
//! picking one weighted destination of a route.
//!
//! Every picker is built once per config (schedules, rings) and picks without
//! locks: shared state is atomics only. Randomness comes from a per-thread
//! small RNG, never a global one.

use std::cell::RefCell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use dpumesh_api::config::LbKind;

use crate::compiled::EndpointRt;

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// A uniformly random `u64` from this thread's RNG.
pub fn random_u64() -> u64 {
    RNG.with(|r| r.borrow_mut().random())
}

/// A uniformly random integer in `0..n` (`n > 0`).
pub fn random_below(n: u64) -> u64 {
    RNG.with(|r| r.borrow_mut().random_range(0..n.max(1)))
}

/// True with probability `percent`/100.
pub fn chance(percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    if percent <= 0.0 {
        return false;
    }
    RNG.with(|r| r.borrow_mut().random::<f64>() * 100.0 < percent)
}

/// A stable 64-bit hash (SipHash with fixed keys: the same in every process
/// of the same build, so consistent hashing survives config swaps).
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// How one priority level picks among its endpoints.
#[derive(Debug)]
pub enum Picker {
    /// Weighted round robin over a precomputed smooth schedule.
    RoundRobin {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    /// Envoy's default: the less loaded of two random picks. With equal
    /// weights the picks are uniform and the less loaded has fewer active
    /// requests; with unequal weights (`cumulative` set) the picks follow the
    /// weights and the less loaded has the lower active / weight (a tie keeps
    /// the first pick), so that an idle cluster is shared by weight, as
    /// Envoy's weighted least request (EDF over weight / (active + 1)) shares it.
    LeastRequest { cumulative: Option<Vec<u64>> },
    /// Uniformly random: Envoy's random load balancer ignores endpoint weights.
    Random,
    /// Ketama-style ring: sorted (hash, endpoint index).
    RingHash { ring: Vec<(u64, u32)> },
}

/// Ring points per unit of endpoint weight.
const POINTS_PER_WEIGHT: u64 = 256;
/// Bound on the ring (Envoy's default maximum ring size).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Bound on the round-robin schedule length.
const MAX_SCHEDULE: u64 = 4096;

impl Picker {
    pub fn build(kind: LbKind, endpoints: &[std::sync::Arc<EndpointRt>]) -> Picker {
        let weights: Vec<u64> = endpoints.iter().map(|e| e.weight.max(1) as u64).collect();
        match kind {
            LbKind::RoundRobin => Picker::RoundRobin {
                schedule: smooth_schedule(&weights),
                next: AtomicUsize::new(random_below(weights.len().max(1) as u64) as usize),
            },
            LbKind::LeastRequest => Picker::LeastRequest {
                cumulative: (!weights.windows(2).all(|w| w[0] == w[1])).then(|| {
                    let mut acc = 0;
                    weights
                        .iter()
                        .map(|w| {
                            acc += w;
                            acc
                        })
                        .collect()
                }),
            },
            LbKind::Random => Picker::Random,
            LbKind::ConsistentHash => {
                // A fixed number of points per unit of weight (not a fixed ring
                // size): removing an endpoint then moves only the keys it owned.
                let total: u64 = weights.iter().sum::<u64>().max(1);
                let per_weight = (MAX_RING_SIZE / total).clamp(1, POINTS_PER_WEIGHT);
                let mut ring = Vec::new();
                for (i, (ep, w)) in endpoints.iter().zip(&weights).enumerate() {
                    let replicas = w * per_weight;
                    for r in 0..replicas {
                        ring.push((stable_hash(&(ep.addr, r)), i as u32));
                    }
                }
                ring.sort_unstable();
                Picker::RingHash { ring }
            }
        }
    }

    /// Index of the picked endpoint; `hash` is used by the ring (absent: random).
    pub fn pick(&self, endpoints: &[std::sync::Arc<EndpointRt>], hash: Option<u64>) -> usize {
        let n = endpoints.len();
        if n <= 1 {
            return 0;
        }
        match self {
            Picker::RoundRobin { schedule, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if schedule.is_empty() {
                    i % n
                } else {
                    schedule[i % schedule.len()] as usize
                }
            }
            Picker::LeastRequest { cumulative: None } => {
                let a = random_below(n as u64) as usize;
                let mut b = random_below(n as u64 - 1) as usize;
                if b >= a {
                    b += 1;
                }
                if endpoints[b].active() < endpoints[a].active() {
                    b
                } else {
                    a
                }
            }
            Picker::LeastRequest {
                cumulative: Some(cumulative),
            } => {
                let draw = || {
                    let r = random_below(cumulative.last().copied().unwrap_or(1));
                    cumulative.partition_point(|&c| c <= r).min(n - 1)
                };
                let (a, b) = (draw(), draw());
                // active / weight compared without division; a tie (an idle
                // cluster) keeps the first draw, so idle shares follow weights.
                let load = |x: usize, y: usize| {
                    endpoints[x].active() as u64 * endpoints[y].weight.max(1) as u64
                };
                if load(b, a) < load(a, b) {
                    b
                } else {
                    a
                }
            }
            Picker::Random => random_below(n as u64) as usize,
            Picker::RingHash { ring } => {
                let h = hash.unwrap_or_else(random_u64);
                let i = ring.partition_point(|&(k, _)| k < h);
                let (_, ep) = ring
                    .get(i)
                    .or_else(|| ring.first())
                    .copied()
                    .unwrap_or((0, 0));
                ep as usize
            }
        }
    }
}

/// Nginx's smooth weighted round robin, unrolled into a schedule. Empty when
/// all weights are equal (plain modulo is then exact and cheaper).
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let mut total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        // Keep proportions roughly; every endpoint keeps at least one slot.
        w = w
            .iter()
            .map(|x| (x * MAX_SCHEDULE / total).max(1))
            .collect();
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Picks one of `weights.len()` choices with probability proportional to its
/// weight (per-request weighted random, like Envoy's weighted clusters).
pub fn pick_weighted(weights: &[u32], total: u32) -> usize {
    if weights.len() <= 1 || total == 0 {
        return 0;
    }
    let mut r = random_below(total as u64) as u32;
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn eps(weights: &[u32]) -> Vec<Arc<EndpointRt>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(EndpointRt::new(
                    format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                    *w,
                    Default::default(),
                ))
            })
            .collect()
    }

    fn counts(
        p: &Picker,
        e: &[Arc<EndpointRt>],
        n: usize,
        hash: impl Fn(usize) -> Option<u64>,
    ) -> Vec<usize> {
        let mut c = vec![0; e.len()];
        for i in 0..n {
            c[p.pick(e, hash(i))] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exact_and_weighted() {
        let e = eps(&[1, 1, 1]);
        let p = Picker::build(LbKind::RoundRobin, &e);
        assert_eq!(counts(&p, &e, 300, |_| None), vec![100, 100, 100]);
        let e = eps(&[3, 1]);
        let p = Picker::build(LbKind::RoundRobin, &e);
        assert_eq!(counts(&p, &e, 400, |_| None), vec![300, 100]);
    }

    #[test]
    fn random_ignores_weights_as_envoy_does() {
        let e = eps(&[9, 1]);
        let p = Picker::build(LbKind::Random, &e);
        let c = counts(&p, &e, 20_000, |_| None);
        assert!((9_400..10_600).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_request_shares_an_idle_cluster_by_weight() {
        let e = eps(&[1, 1, 2]);
        let p = Picker::build(LbKind::LeastRequest, &e);
        let c = counts(&p, &e, 20_000, |_| None);
        assert!((4_400..5_600).contains(&c[0]), "{c:?}");
        assert!((9_400..10_600).contains(&c[2]), "{c:?}");
        // Equal weights: uniform.
        let e = eps(&[1, 1]);
        let p = Picker::build(LbKind::LeastRequest, &e);
        let c = counts(&p, &e, 20_000, |_| None);
        assert!((9_400..10_600).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let e = eps(&[1, 1]);
        for _ in 0..5 {
            e[0].begin();
        }
        let p = Picker::build(LbKind::LeastRequest, &e);
        assert_eq!(counts(&p, &e, 100, |_| None), vec![0, 100]);
    }

    #[test]
    fn ring_hash_is_sticky_and_spreads() {
        let e = eps(&[1, 1, 1, 1]);
        let p = Picker::build(LbKind::ConsistentHash, &e);
        for key in 0..50u64 {
            let h = stable_hash(&key);
            let first = p.pick(&e, Some(h));
            assert!((0..10).all(|_| p.pick(&e, Some(h)) == first));
        }
        let c = counts(&p, &e, 4000, |i| Some(stable_hash(&i)));
        assert!(c.iter().all(|&x| x > 600), "{c:?}");
        // Removing one endpoint moves only the keys it owned.
        let e3: Vec<_> = e[..3].to_vec();
        let p3 = Picker::build(LbKind::ConsistentHash, &e3);
        let moved = (0..1000u64)
            .filter(|k| {
                let h = stable_hash(k);
                let a = p.pick(&e, Some(h));
                a != 3 && p3.pick(&e3, Some(h)) != a
            })
            .count();
        assert!(moved < 50, "{moved} keys moved");
    }

    #[test]
    fn weighted_split() {
        let mut c = [0; 2];
        for _ in 0..10_000 {
            c[pick_weighted(&[90, 10], 100)] += 1;
        }
        assert!((8_700..9_300).contains(&c[0]), "{c:?}");
        assert_eq!(pick_weighted(&[0, 5], 5), 1);
    }
}
