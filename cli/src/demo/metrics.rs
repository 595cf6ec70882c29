//! Reading the components' Prometheus / OpenMetrics text.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parses the text format; comment lines and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // key
            let mut key = String::new();
            while let Some(&(i, c)) = chars.peek() {
                if c == '}' {
                    end = Some(i);
                    break;
                }
                chars.next();
                if c == '=' {
                    break;
                }
                if c != ',' && !c.is_whitespace() {
                    key.push(c);
                }
            }
            if end.is_some() {
                break;
            }
            // quoted value with escapes
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Sum of the samples named `name` whose labels hold every `(key, value)` of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_escapes() {
        let text = "# TYPE x counter\n\
                    istio_requests_total{reporter=\"source\",response_flags=\"DI,FI\",q=\"a\\\"b\"} 12\n\
                    dpumesh_dataplane_pods 3\n\
                    garbage\n\
                    # EOF\n";
        let s = parse(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label("response_flags"), "DI,FI");
        assert_eq!(s[0].label("q"), "a\"b");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].name, "dpumesh_dataplane_pods");
        assert_eq!(
            sum(&s, "istio_requests_total", &[("reporter", "source")]),
            12.0
        );
        assert_eq!(sum(&s, "istio_requests_total", &[("reporter", "x")]), 0.0);
    }
}
