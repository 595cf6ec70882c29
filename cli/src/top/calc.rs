//! The arithmetic of `dpumesh top`: counter deltas between two scrapes and
//! quantiles from cumulative histogram buckets (as PromQL's `rate` and
//! `histogram_quantile`).

use super::prom::Sample;

/// Increase of a counter from `prev` to `cur`. A counter that went down was
/// reset (process restart, series gone and back): its increase is `cur`.
pub fn counter_delta(prev: f64, cur: f64) -> f64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// Sum of the samples named `name` for which `keep` holds.
pub fn sum_where(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .sum()
}

/// Cumulative buckets `(le, count)` of histogram `base` (`<base>_bucket`)
/// summed over the series for which `keep` holds, sorted by `le`.
pub fn buckets_where(
    samples: &[Sample],
    base: &str,
    keep: impl Fn(&Sample) -> bool,
) -> Vec<(f64, f64)> {
    let name = format!("{base}_bucket");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for s in samples.iter().filter(|s| s.name == name && keep(s)) {
        let le = match s.label("le") {
            "+Inf" | "Inf" => f64::INFINITY,
            other => match other.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        match out.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += s.value,
            None => out.push((le, s.value)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Per-bucket increase from `prev` to `cur` (both as from [`buckets_where`]).
/// A bucket missing in `prev` counts from 0.
pub fn buckets_delta(prev: &[(f64, f64)], cur: &[(f64, f64)]) -> Vec<(f64, f64)> {
    cur.iter()
        .map(|&(le, c)| {
            let p = prev
                .iter()
                .find(|(l, _)| *l == le)
                .map(|(_, v)| *v)
                .unwrap_or(0.0);
            (le, counter_delta(p, c))
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative buckets sorted by `le`, the last
/// being `+Inf`; linear interpolation inside the bucket, as Prometheus's
/// `histogram_quantile`. `None` when there are no observations (or no `+Inf`
/// bucket). A quantile falling into `+Inf` is the highest finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_le, total) = buckets.last()?;
    if !last_le.is_infinite() || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, count) in buckets {
        if count >= rank && count > 0.0 {
            if le.is_infinite() {
                return Some(lower);
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / in_bucket);
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[(f64, f64)]) -> Vec<(f64, f64)> {
        v.to_vec()
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 100 observations: 50 in (0,1], 40 in (1,5], 10 in (5,10].
        let buckets = b(&[
            (1.0, 50.0),
            (5.0, 90.0),
            (10.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        assert_eq!(histogram_quantile(0.5, &buckets), Some(1.0));
        // rank 25 of 50 in (0,1] -> 0.5
        assert_eq!(histogram_quantile(0.25, &buckets), Some(0.5));
        // rank 70: 20 of 40 into (1,5] -> 3
        assert_eq!(histogram_quantile(0.7, &buckets), Some(3.0));
        // rank 99: 9 of 10 into (5,10] -> 9.5
        let p99 = histogram_quantile(0.99, &buckets).unwrap();
        assert!((p99 - 9.5).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn quantile_in_inf_bucket_is_highest_finite_bound_and_empty_is_none() {
        let buckets = b(&[(1.0, 1.0), (5.0, 1.0), (f64::INFINITY, 10.0)]);
        assert_eq!(histogram_quantile(0.99, &buckets), Some(5.0));
        let empty = b(&[(1.0, 0.0), (f64::INFINITY, 0.0)]);
        assert_eq!(histogram_quantile(0.5, &empty), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
        let no_inf = b(&[(1.0, 3.0)]);
        assert_eq!(histogram_quantile(0.5, &no_inf), None);
        assert_eq!(histogram_quantile(1.5, &buckets), None);
    }

    #[test]
    fn deltas_between_scrapes_drive_the_quantile() {
        // Before: 100 fast requests. Between the scrapes: 10 slow ones only.
        let prev = b(&[(1.0, 100.0), (100.0, 100.0), (f64::INFINITY, 100.0)]);
        let cur = b(&[(1.0, 100.0), (100.0, 110.0), (f64::INFINITY, 110.0)]);
        let d = buckets_delta(&prev, &cur);
        assert_eq!(d, b(&[(1.0, 0.0), (100.0, 10.0), (f64::INFINITY, 10.0)]));
        let p50 = histogram_quantile(0.5, &d).unwrap();
        assert!(p50 > 1.0 && p50 <= 100.0, "{p50}");
        // The cumulative view would have said <= 1 ms.
        assert!(histogram_quantile(0.5, &cur).unwrap() <= 1.0);
    }

    #[test]
    fn counter_reset_counts_the_new_value() {
        assert_eq!(counter_delta(10.0, 15.0), 5.0);
        assert_eq!(counter_delta(10.0, 3.0), 3.0);
    }

    #[test]
    fn buckets_are_summed_over_matching_series() {
        let text = "h_bucket{p=\"a\",le=\"1\"} 1\nh_bucket{p=\"a\",le=\"+Inf\"} 2\n\
                    h_bucket{p=\"b\",le=\"1\"} 3\nh_bucket{p=\"b\",le=\"+Inf\"} 5\n\
                    h_bucket{p=\"c\",le=\"1\"} 100\nh_bucket{p=\"c\",le=\"+Inf\"} 100\n";
        let s = super::super::prom::parse(text).unwrap();
        let got = buckets_where(&s, "h", |x| x.label("p") != "c");
        assert_eq!(got, b(&[(1.0, 4.0), (f64::INFINITY, 7.0)]));
        assert_eq!(sum_where(&s, "h_bucket", |x| x.label("le") == "1"), 104.0);
    }
}
