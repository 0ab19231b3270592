//! Converts a `google.protobuf.Struct` payload to JSON text.
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
pub(crate) enum StructError {
    #[error("contains {0}, which JSON cannot represent")]
    NotFinite(&'static str),
    #[error("contains a value with no kind set")]
    NoKind,
}

/// The JSON text of a Struct, keys in the Struct's (sorted) order.
pub(crate) fn struct_to_json(payload: &Struct) -> Result<String, StructError> {
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

#[cfg(test)]
mod tests {
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
}
