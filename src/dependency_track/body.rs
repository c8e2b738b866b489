//! The body of `PUT /api/v1/bom`, written as it is sent: the JSON fields,
//! then the BOM decompressed and base64-encoded a chunk at a time, so an
//! upload holds the ConfigMap's (compressed) payload and two small buffers,
//! never the decompressed BOM, its base64 text or the JSON around it (a 30
//! MiB BOM took about 150 MiB that way).

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use flate2::read::GzDecoder;
use serde_json::Value;

/// Decompressed bytes encoded per chunk: a multiple of 3, so base64 needs
/// no padding until the end.
const CHUNK: usize = 48 * 1024;

enum Phase {
    Head(Vec<u8>),
    Bom(Box<dyn Read + Send>, u64),
    Tail,
    Done,
}

/// `fields` (a JSON object) with `"bom"` added: the payload (gzip or plain
/// JSON), decompressed up to `limit` bytes (more ends the body with an
/// error, so the upload fails rather than sending a cut BOM).
pub fn stream(
    fields: &Value,
    payload: Vec<u8>,
    limit: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    let mut head = serde_json::to_vec(fields).unwrap_or_else(|_| b"{}".to_vec());
    // `{...}` without its closing brace, then the BOM's field.
    head.pop();
    if head.len() > 1 {
        head.push(b',');
    }
    head.extend_from_slice(br#""bom":""#);
    let reader: Box<dyn Read + Send> = if payload.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(std::io::Cursor::new(payload)).take(limit + 1))
    } else {
        Box::new(std::io::Cursor::new(payload).take(limit + 1))
    };
    futures::stream::unfold(
        (Phase::Head(head), Some(reader)),
        move |(phase, mut reader)| async move {
            match phase {
                Phase::Head(h) => {
                    let r = reader.take().expect("the reader is there until the BOM");
                    Some((Ok(Bytes::from(h)), (Phase::Bom(r, 0), None)))
                }
                Phase::Bom(mut r, seen) => {
                    let mut buf = vec![0u8; CHUNK];
                    let mut filled = 0;
                    while filled < CHUNK {
                        match r.read(&mut buf[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let e = std::io::Error::new(
                                    e.kind(),
                                    format!("the SBOM could not be decompressed: {e}"),
                                );
                                return Some((Err(e), (Phase::Done, None)));
                            }
                        }
                    }
                    let seen = seen + filled as u64;
                    if seen > limit {
                        let e = std::io::Error::other(format!(
                            "the SBOM is larger than {limit} bytes decompressed"
                        ));
                        return Some((Err(e), (Phase::Done, None)));
                    }
                    buf.truncate(filled);
                    let text = Bytes::from(STANDARD.encode(&buf));
                    let next = if filled < CHUNK {
                        Phase::Tail
                    } else {
                        Phase::Bom(r, seen)
                    };
                    Some((Ok(text), (next, None)))
                }
                Phase::Tail => Some((Ok(Bytes::from_static(b"\"}")), (Phase::Done, None))),
                Phase::Done => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    async fn collect(fields: &Value, payload: Vec<u8>, limit: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut s = Box::pin(stream(fields, payload, limit));
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn the_streamed_body_is_the_json_a_whole_encoding_gives() {
        let fields = json!({"projectName": "p-\"q\"", "autoCreate": true});
        for size in [0usize, 1, 2, 3, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let bom: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            for payload in [bom.clone(), gzip(&bom)] {
                let got = collect(&fields, payload, 1 << 20).await.unwrap();
                let v: Value = serde_json::from_slice(&got).expect("valid JSON");
                assert_eq!(v["projectName"], "p-\"q\"");
                assert_eq!(v["autoCreate"], true);
                assert_eq!(v["bom"], STANDARD.encode(&bom), "size {size}");
            }
        }
        let empty = collect(&json!({}), b"{}".to_vec(), 10).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap(),
            json!({"bom": STANDARD.encode(b"{}")})
        );
    }

    #[tokio::test]
    async fn more_than_the_limit_ends_in_an_error() {
        let bom = vec![b'a'; 200_000];
        let err = collect(&json!({}), gzip(&bom), 100_000).await.unwrap_err();
        assert!(err.contains("larger than 100000"), "{err}");
        assert!(collect(&json!({}), gzip(&bom), 200_000).await.is_ok());
        let err = collect(&json!({}), vec![0x1f, 0x8b, 1, 2, 3], 10)
            .await
            .unwrap_err();
        assert!(err.contains("decompressed"), "{err}");
    }
}
