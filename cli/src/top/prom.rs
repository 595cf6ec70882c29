//! A small parser for the Prometheus text format (and OpenMetrics text, which
//! is what dpu-proxy and the dataplane serve): samples with labels and values.
//! `# HELP`, `# TYPE`, `# UNIT` and `# EOF` lines are skipped; timestamps and
//! exemplars after the value are ignored.

use anyhow::{bail, Context, Result};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key` ("" when the sample has no such label, as Prometheus).
    pub fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Parses a whole exposition. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample =
            parse_line(line).with_context(|| format!("metrics line {}: {line:?}", i + 1))?;
        out.push(sample);
    }
    Ok(out)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map(|(i, _)| i)
        .unwrap_or(line.len());
    if name_end == 0 {
        bail!("no metric name");
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("no value")?;
    let value = parse_value(value)?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let key_end = s
            .char_indices()
            .find(|&(i, c)| !is_name_char(c, i == 0))
            .map(|(i, _)| i)
            .context("unterminated label set")?;
        if key_end == 0 {
            bail!("bad label name at {s:?}");
        }
        let key = s[..key_end].to_string();
        s = s[key_end..].trim_start();
        s = s
            .strip_prefix('=')
            .with_context(|| format!("label {key}: expected '='"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .with_context(|| format!("label {key}: expected '\"'"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => bail!("label {key}: unterminated value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => bail!("label {key}: bad escape \\{c}"),
                    None => bail!("label {key}: unterminated value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            bail!("expected ',' or '}}' after a label");
        }
    }
}

fn parse_value(v: &str) -> Result<f64> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v
            .parse::<f64>()
            .with_context(|| format!("bad sample value {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_labels_and_special_values() {
        let text = "# HELP x y\n# TYPE a counter\na_total 3\n\
                    b{x=\"1\",y=\"q\\\"uo\\\\te\\n\"} 2.5 1700000000\n\
                    c_bucket{le=\"+Inf\"} 7\nd NaN\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("x"), "1");
        assert_eq!(s[1].label("y"), "q\"uo\\te\n");
        assert_eq!(s[1].label("missing"), "");
        assert_eq!(s[1].value, 2.5);
        assert_eq!(s[2].label("le"), "+Inf");
        assert!(s[3].value.is_nan());
    }

    #[test]
    fn malformed_lines_are_errors_that_name_the_line() {
        for bad in [
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x 1.2.3",
            "x",
            "{a=\"1\"} 2",
            "x{a=\"\\q\"} 1",
        ] {
            let e = parse(&format!("ok 1\n{bad}\n")).unwrap_err();
            assert!(format!("{e:#}").contains("line 2"), "{bad}: {e:#}");
        }
    }
}
