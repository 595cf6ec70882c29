//! Small conversions shared by the translator.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Duration, Struct};
use prost::{Message, Name};

/// Milliseconds of a protobuf Duration (negative durations count as 0).
pub fn millis(d: &Duration) -> u64 {
    let ms = i128::from(d.seconds) * 1000 + i128::from(d.nanos) / 1_000_000;
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

/// A FractionalPercent as a percentage 0..=100.
pub fn percent(p: &FractionalPercent) -> f64 {
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(p.numerator) / denominator * 100.0).min(100.0)
}

/// Decodes an `Any` as `T`, checking the type URL.
pub fn unpack<T: Message + Name + Default>(any: &Any) -> Result<T, String> {
    let expected = T::type_url();
    if any.type_url != expected {
        return Err(format!(
            "typed_config is {:?}, expected {expected:?}",
            any.type_url
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| format!("{}: not a valid protobuf message: {e}", T::full_name()))
}

/// `filter_metadata[filter]` of a Metadata.
pub fn filter_metadata<'a>(metadata: Option<&'a Metadata>, filter: &str) -> Option<&'a Struct> {
    metadata.and_then(|m| m.filter_metadata.get(filter))
}

/// A Struct field holding a Struct of strings, as a map (non-strings skipped).
pub fn string_map(s: &Struct, field: &str) -> Option<BTreeMap<String, String>> {
    let Some(Kind::StructValue(inner)) = s.fields.get(field).and_then(|v| v.kind.as_ref()) else {
        return None;
    };
    Some(
        inner
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
    )
}

/// A Struct field holding a string.
pub fn string_field<'a>(s: &'a Struct, field: &str) -> Option<&'a str> {
    match s.fields.get(field).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => Some(v),
        _ => None,
    }
}

/// A stable 64-bit FNV-1a hash (content addressing of route tables: the same
/// content always gets the same name, across runs and builds).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
