//! Reading a bounded prefix of a response body for the attempt log.
//!
//! Receivers answer with anything from an empty body to an HTML error page of megabytes.
//! Only a prefix is worth keeping, and reading more than that would let one endpoint spend
//! the sender's memory and bandwidth, so the body is streamed and dropped once the cap is
//! reached.

/// Reads at most `cap` bytes of the body. On a read error, returns what arrived before it
/// along with the error, so the log still shows the start of the answer.
pub(crate) async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> (Vec<u8>, Option<reqwest::Error>) {
    // Content-Length is only a hint (it may be absent or lie), but it avoids reallocating
    // for small bodies without letting a large claim allocate more than the cap.
    let hint = response
        .content_length()
        .and_then(|len| usize::try_from(len).ok())
        .unwrap_or(cap);
    let mut buffer = Vec::with_capacity(hint.min(cap));
    while buffer.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - buffer.len();
                buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(err) => return (buffer, Some(err)),
        }
    }
    (buffer, None)
}

/// Lossy UTF-8 of the prefix, never longer than `cap` bytes. The cut may fall inside a
/// multi-byte character, whose replacement character is then dropped rather than letting
/// the excerpt grow past the cap.
pub(crate) fn to_excerpt(bytes: &[u8], cap: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(cap)]).into_owned();
    if text.len() > cap {
        let boundary = text.floor_char_boundary(cap);
        text.truncate(boundary);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::to_excerpt;

    #[test]
    fn excerpt_is_capped_in_bytes() {
        assert_eq!(to_excerpt(b"hello", 10), "hello");
        assert_eq!(to_excerpt(b"hello", 3), "hel");
        assert_eq!(to_excerpt(b"", 3), "");
        // "é" is two bytes: cutting after its first byte must not exceed the cap.
        let text = "aé".as_bytes();
        let excerpt = to_excerpt(&text[..2], 2);
        assert!(excerpt.len() <= 2, "{excerpt:?}");
        assert!(excerpt.starts_with('a'));
        // Invalid bytes become replacement characters, still within the cap.
        let excerpt = to_excerpt(&[b'x', 0xff, 0xfe, b'y'], 4);
        assert!(
            excerpt.len() <= 4 && excerpt.starts_with('x'),
            "{excerpt:?}"
        );
    }
}
