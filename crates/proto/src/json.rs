//! Conversions between `google.protobuf.Struct` (what grpcurl users type) and JSON text
//! (what Sluice stores and delivers).
//!
//! Struct numbers are all doubles, so `{"count": 3}` arrives as 3.0; written naively it would
//! reach receivers as `3.0`, which many JSON decoders refuse for an integer field. Integral
//! doubles within the range a double represents exactly are therefore written as integers.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// The largest integer a double holds exactly (2^53); beyond it, integral-looking doubles
/// are rounded values and are kept as floats.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Why a Struct cannot become JSON.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StructError {
    #[error("contains {0}, which JSON cannot represent")]
    NotFinite(&'static str),
    #[error("contains a value with no kind set")]
    NoKind,
}

/// The JSON text of a Struct, keys in the Struct's (sorted) order.
pub fn struct_to_json(payload: &Struct) -> Result<String, StructError> {
    Ok(Json::Object(object(payload)?).to_string())
}

fn object(payload: &Struct) -> Result<Map<String, Json>, StructError> {
    payload
        .fields
        .iter()
        .map(|(key, value)| Ok((key.clone(), value_to_json(value)?)))
        .collect()
}

fn list(list: &ListValue) -> Result<Vec<Json>, StructError> {
    list.values.iter().map(value_to_json).collect()
}

fn value_to_json(value: &Value) -> Result<Json, StructError> {
    match &value.kind {
        None => Err(StructError::NoKind),
        Some(Kind::NullValue(_)) => Ok(Json::Null),
        Some(Kind::BoolValue(b)) => Ok(Json::Bool(*b)),
        Some(Kind::StringValue(s)) => Ok(Json::String(s.clone())),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StructValue(s)) => Ok(Json::Object(object(s)?)),
        Some(Kind::ListValue(l)) => Ok(Json::Array(list(l)?)),
    }
}

fn number(n: f64) -> Result<Json, StructError> {
    if n.is_nan() {
        return Err(StructError::NotFinite("NaN"));
    }
    if n.is_infinite() {
        return Err(StructError::NotFinite("an infinite number"));
    }
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        // Exact: the value is integral and within ±2^53, so the cast loses nothing.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Json::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(Json::Number)
        .ok_or(StructError::NotFinite("a number"))
}

/// JSON text (an object) as a protobuf Struct.
pub fn json_to_struct(text: &str) -> Option<prost_types::Struct> {
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        serde_json::Value::Object(map) => Some(map_to_struct(map)),
        _ => None,
    }
}

fn map_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(map_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    #[test]
    fn converts_every_kind() {
        let nested = Struct {
            fields: BTreeMap::from([("id".to_owned(), v(Kind::StringValue("cnv_1".into())))]),
        };
        let payload = Struct {
            fields: BTreeMap::from([
                ("count".to_owned(), v(Kind::NumberValue(3.0))),
                ("ratio".to_owned(), v(Kind::NumberValue(0.5))),
                ("negative".to_owned(), v(Kind::NumberValue(-42.0))),
                ("huge".to_owned(), v(Kind::NumberValue(1e300))),
                ("flag".to_owned(), v(Kind::BoolValue(true))),
                ("nothing".to_owned(), v(Kind::NullValue(0))),
                ("conversation".to_owned(), v(Kind::StructValue(nested))),
                (
                    "list".to_owned(),
                    v(Kind::ListValue(ListValue {
                        values: vec![v(Kind::NumberValue(1.0)), v(Kind::StringValue("a".into()))],
                    })),
                ),
            ]),
        };
        assert_eq!(
            struct_to_json(&payload),
            Ok(r#"{"conversation":{"id":"cnv_1"},"count":3,"flag":true,"huge":1e+300,"list":[1,"a"],"negative":-42,"nothing":null,"ratio":0.5}"#.to_owned())
        );
    }

    #[test]
    fn refuses_what_json_cannot_hold() {
        for (n, what) in [(f64::NAN, "NaN"), (f64::INFINITY, "an infinite number")] {
            let payload = Struct {
                fields: BTreeMap::from([("x".to_owned(), v(Kind::NumberValue(n)))]),
            };
            assert_eq!(struct_to_json(&payload), Err(StructError::NotFinite(what)));
        }
        let payload = Struct {
            fields: BTreeMap::from([("x".to_owned(), Value { kind: None })]),
        };
        assert_eq!(struct_to_json(&payload), Err(StructError::NoKind));
    }

    #[test]
    fn empty_struct_is_an_empty_object() {
        assert_eq!(struct_to_json(&Struct::default()), Ok("{}".to_owned()));
    }

    #[test]
    fn round_trips_objects_and_keeps_integers_integral() {
        let text = r#"{"a":1,"b":[true,null,"x"],"c":{"d":2.5},"e":-3}"#;
        let s = json_to_struct(text).unwrap();
        let back: serde_json::Value = serde_json::from_str(&struct_to_json(&s).unwrap()).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
        assert!(json_to_struct("[1]").is_none());
        assert!(json_to_struct("nope").is_none());
    }
}
