//! The body of an attempt in the subscription's payload shape, derived from the envelope
//! built once at ingest: `ENVELOPE` is that envelope itself (a reference-count increment, as
//! before), `RAW` a slice of it (the publisher's payload bytes, no copy), `THIN` its head
//! closed without the payload (one small copy). Signatures cover the body returned here.

use bytes::Bytes;
use sluice_core::envelope::split_envelope;
use sluice_core::policy::PayloadShape;

/// The body to send for `shape`; the envelope itself if it cannot be split (it always can
/// when built by `build_envelope`).
pub(crate) fn body(shape: PayloadShape, envelope: &Bytes) -> Bytes {
    let split = match shape {
        PayloadShape::Envelope => return envelope.clone(),
        PayloadShape::Raw | PayloadShape::Thin => split_envelope(envelope),
    };
    let Some((head_end, payload_start)) = split else {
        return envelope.clone();
    };
    match shape {
        PayloadShape::Raw => envelope.slice(payload_start..envelope.len() - 1),
        _ => {
            let mut thin = Vec::with_capacity(head_end + 1);
            thin.extend_from_slice(&envelope[..head_end]);
            thin.push(b'}');
            Bytes::from(thin)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn shapes_come_from_the_envelope() {
        let payload = r#"{"conversation": {"id": "cnv_1"}, "n": 1.50}"#;
        let envelope = Bytes::from(sluice_core::envelope::build_envelope(
            "msg_1",
            "conversation.created",
            1,
            chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            "wrk_1",
            payload,
        ));
        assert_eq!(body(PayloadShape::Envelope, &envelope), envelope);
        assert_eq!(body(PayloadShape::Raw, &envelope), payload.as_bytes());
        assert_eq!(
            body(PayloadShape::Thin, &envelope),
            r#"{"id":"msg_1","event":"conversation.created","version":1,"timestamp":"2023-11-14T22:13:20.123Z","workspace_id":"wrk_1"}"#.as_bytes()
        );
        let odd = Bytes::from_static(b"not an envelope");
        assert_eq!(body(PayloadShape::Raw, &odd), odd);
    }
}
