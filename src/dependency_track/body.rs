//! The BOM of `POST /api/v1/bom` (multipart), written as it is sent: the
//! payload decompressed a chunk at a time, so an upload holds the
//! ConfigMap's (compressed) payload and one small buffer, never the
//! decompressed BOM. (Upstream's `PUT` with the BOM base64-encoded in JSON
//! held it three times over, and Dependency-Track refuses it beyond 20
//! million base64 characters, about 14.3 MiB of BOM.)

use std::io::Read;

use bytes::Bytes;
use flate2::read::GzDecoder;

/// Decompressed bytes sent per chunk.
const CHUNK: usize = 64 * 1024;

/// The payload (gzip or plain JSON), decompressed up to `limit` bytes; more
/// ends the stream with an error, so the upload fails rather than sending
/// a cut BOM.
pub fn stream(
    payload: Vec<u8>,
    limit: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    let reader: Box<dyn Read + Send> = if payload.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(std::io::Cursor::new(payload)).take(limit + 1))
    } else {
        Box::new(std::io::Cursor::new(payload).take(limit + 1))
    };
    futures::stream::unfold(Some((reader, 0u64)), move |state| async move {
        let (mut r, seen) = state?;
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
                    return Some((Err(e), None));
                }
            }
        }
        let seen = seen + filled as u64;
        if seen > limit {
            let e = std::io::Error::other(format!(
                "the SBOM is larger than {limit} bytes decompressed"
            ));
            return Some((Err(e), None));
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        let next = (filled == CHUNK).then_some((r, seen));
        Some((Ok(Bytes::from(buf)), next))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn collect(payload: Vec<u8>, limit: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut s = Box::pin(stream(payload, limit));
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
    async fn the_stream_is_the_decompressed_payload() {
        for size in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let bom: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            for payload in [bom.clone(), gzip(&bom)] {
                assert_eq!(collect(payload, 1 << 20).await.unwrap(), bom, "size {size}");
            }
        }
    }

    #[tokio::test]
    async fn more_than_the_limit_ends_in_an_error() {
        let bom = vec![b'a'; 200_000];
        let err = collect(gzip(&bom), 100_000).await.unwrap_err();
        assert!(err.contains("larger than 100000"), "{err}");
        assert_eq!(collect(gzip(&bom), 200_000).await.unwrap().len(), 200_000);
        let err = collect(vec![0x1f, 0x8b, 1, 2, 3], 10).await.unwrap_err();
        assert!(err.contains("decompressed"), "{err}");
    }
}
