//! Metric names in PromQL expressions and in an exposition: what the dashboard
//! test uses to check that every query of charts/dpumesh/dashboards/*.json names
//! a metric the components really expose.

use std::collections::BTreeSet;

/// PromQL keywords that look like identifiers but are not metrics.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    // Aggregation operators: also written `sum by (x) (...)`, not followed by `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised label list (not an expression).
const LABEL_LIST: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects: identifiers that are not function
/// calls, keywords, label lists (`by (...)`), label matchers (`{...}`), strings,
/// ranges (`[5m]`), numbers or Grafana variables (`$x`, `${x}`). A Grafana
/// `label_values(metric, label)` template query gives its metric.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let c: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch == '{' {
            i = skip_until(&c, i, '}');
        } else if ch == '[' {
            i = skip_until(&c, i, ']');
        } else if ch == '$' {
            i += 1;
            if i < c.len() && c[i] == '{' {
                i = skip_until(&c, i, '}');
            } else {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, also 1e3, 0x1f, durations like 5m.
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let call = c.get(j) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST.contains(&lower.as_str()) {
                if call {
                    i = skip_until(&c, j, ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || call {
                // A function or aggregation: its arguments are scanned next.
            } else {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    // label_values(metric, label): the second argument is a label, not a metric.
    if let Some(rest) = expr.trim().strip_prefix("label_values(") {
        if let Some((_, label)) = rest.trim_end_matches(')').rsplit_once(',') {
            out.remove(label.trim());
        }
    }
    out
}

fn skip_string(c: &[char], start: usize) -> usize {
    let quote = c[start];
    let mut i = start + 1;
    while i < c.len() {
        if c[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if c[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// Index after the `close` matching position `start` (strings inside skipped).
fn skip_until(c: &[char], start: usize, close: char) -> usize {
    let open = c[start];
    let mut depth = 0;
    let mut i = start;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(c, i);
            continue;
        }
        if ch == open {
            depth += 1;
        } else if ch == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

/// The sample names an exposition offers: every sample line's name, plus the
/// names its `# TYPE` declarations imply (so a family with no series yet still
/// counts): counter `x` → `x_total`; histogram `x` → `x_bucket`, `x_sum`,
/// `x_count`; summary `x` → `x`, `x_sum`, `x_count`; gauge/unknown `x` → `x`;
/// info `x` → `x_info`. A counter is never `x_bucket`, a histogram never `x`.
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut f = decl.split_whitespace();
            let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                continue;
            };
            let base = name.strip_suffix("_total").unwrap_or(name);
            let names: Vec<String> = match kind {
                "counter" => vec![format!("{base}_total")],
                "histogram" | "gaugehistogram" => vec![
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ],
                "summary" => vec![
                    name.to_string(),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ],
                "info" => vec![format!("{name}_info")],
                _ => vec![name.to_string()],
            };
            out.extend(names);
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &str) -> Vec<String> {
        metric_names(e).into_iter().collect()
    }

    #[test]
    fn finds_metrics_not_functions_labels_or_variables() {
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le, source_workload) (rate(istio_request_duration_milliseconds_bucket{reporter=\"source\",source_workload_namespace=~\"$namespace\"}[$__rate_interval])))"),
            ["istio_request_duration_milliseconds_bucket"]
        );
        assert_eq!(
            names("sum(rate(a_total{x=\"b{c}\"}[5m])) / on(instance) group_left(node) b_info{node=~\"$node\"} * 100 and c offset 5m"),
            ["a_total", "b_info", "c"]
        );
        assert_eq!(
            names("label_values(dpumesh_dataplane_info, node)"),
            ["dpumesh_dataplane_info"]
        );
        assert_eq!(names("sum without (pod) (up) > bool 1e3"), ["up"]);
        assert_eq!(names("${x} + count(y:recorded) "), ["y:recorded"]);
    }

    #[test]
    fn exposed_names_follow_type_suffix_rules() {
        let text = "# TYPE c counter\n# TYPE h histogram\n# TYPE g gauge\n# TYPE i info\n\
                    # TYPE t_total counter\nlive_metric{a=\"1\"} 2\n# EOF\n";
        let got = exposed_names(text);
        for want in [
            "c_total",
            "h_bucket",
            "h_sum",
            "h_count",
            "g",
            "i_info",
            "t_total",
            "live_metric",
        ] {
            assert!(got.contains(want), "{want} in {got:?}");
        }
        for not in ["c", "c_bucket", "h", "h_total", "g_total", "t_total_total"] {
            assert!(!got.contains(not), "{not} in {got:?}");
        }
    }
}
