//! Audit records as every runtime writes them: one JSON object per line, keys sorted,
//! absent fields left out, the risk verdict as an object.

use serde::Serialize;
use serde_json::Value;

/// The JSON line of an audit record: the core's [`AuditRecord`](portcullis_core::AuditRecord),
/// or the `decision-record` a gateway component sends its host (whose `risk` is JSON text,
/// written here as the object it is). Absent (`null`) fields and empty lists (a WIT
/// `phases` without timings) are left out, so every runtime writes the same line for the
/// same decision.
pub fn json_line(record: &impl Serialize) -> String {
    serde_json::to_value(record).map_or_else(|_| String::from("{}"), value_line)
}

/// [`json_line`] of a record already made a JSON value (by an adapter that adds fields of
/// its own), without serializing it a second time.
pub fn value_line(record: Value) -> String {
    let Value::Object(mut fields) = record else {
        return String::from("{}");
    };
    fields.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty)));
    if let Some(risk) = fields.get_mut("risk")
        && let Some(text) = risk.as_str()
    {
        // From bytes, as the core reads JSON: one reader (`SliceRead`) in a wasm build.
        *risk = serde_json::from_slice(text.as_bytes()).unwrap_or(Value::Null);
    }
    Value::Object(fields).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Record {
        decision: &'static str,
        host: Option<String>,
        risk: Option<String>,
    }

    #[test]
    fn absent_fields_are_left_out_and_risk_text_becomes_an_object() {
        let line = json_line(&Record {
            decision: "deny",
            host: None,
            risk: Some(r#"{"score":80}"#.into()),
        });
        assert_eq!(line, r#"{"decision":"deny","risk":{"score":80}}"#);
    }

    #[test]
    fn a_record_made_a_value_with_a_field_added_gives_the_same_line_plus_the_field() {
        let record = Record {
            decision: "forward",
            host: None,
            risk: Some(r#"{"score":1}"#.into()),
        };
        let Ok(Value::Object(mut fields)) = serde_json::to_value(&record) else {
            panic!("a record is an object");
        };
        fields.insert("signature_check".into(), "webcrypto".into());
        assert_eq!(
            value_line(Value::Object(fields)),
            r#"{"decision":"forward","risk":{"score":1},"signature_check":"webcrypto"}"#
        );
        assert_eq!(value_line(Value::Null), "{}");
    }

    #[test]
    fn the_cores_record_and_a_components_record_give_the_same_line() {
        let core = portcullis_core::AuditRecord {
            decision: "forward",
            path: "/a".into(),
            ..portcullis_core::AuditRecord::default()
        };
        #[derive(Serialize)]
        struct Wit {
            time_ms: u64,
            request_id: String,
            method: String,
            path: String,
            decision: String,
            status: Option<u16>,
            risk: Option<String>,
            phases: Vec<u64>,
        }
        let wit = Wit {
            time_ms: 0,
            request_id: String::new(),
            method: String::new(),
            path: "/a".into(),
            decision: "forward".into(),
            status: None,
            risk: None,
            phases: Vec::new(),
        };
        assert_eq!(json_line(&core), json_line(&wit));
    }
}
