//! Where each HTTP/1 request of a connection begins and ends, followed byte
//! by byte as the bytes arrive, so the connection layer can bound a request
//! head as a whole and tell a head from a body.
//!
//! actix-http parses the same bytes again; this only needs to agree with it
//! on the framing of requests actix accepts (a request line and headers up
//! to an empty line; a body of `Content-Length` bytes, or chunked). Bytes
//! actix refuses end the connection there anyway. It holds one header line
//! at a time, never a whole head.

/// Longest line kept to look for `Content-Length` and `Transfer-Encoding`;
/// a longer line still counts towards the head limit.
const KEPT_LINE: usize = 1024;

/// What the bytes fed so far complete.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Request heads completed by these bytes.
    pub heads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// The head (or a chunked body's trailer) is longer than the limit.
    HeadTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a head, or between requests.
    Head,
    /// A body of known length: this many bytes still to come.
    Fixed(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data: this many bytes still to come, then its CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer,
}

/// Whether `bytes` hold a line's end, and how many bytes up to it (or all).
fn up_to_line_end(bytes: &[u8]) -> (bool, usize) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (true, i + 1),
        None => (false, bytes.len()),
    }
}

/// The framing of one connection's requests.
#[derive(Debug)]
pub struct Framing {
    limit: usize,
    state: State,
    /// Bytes of the current head (or trailer) so far.
    head: usize,
    /// The current line, up to [`KEPT_LINE`] bytes.
    line: Vec<u8>,
    /// Whether the current head has a request line yet (empty lines before
    /// one are skipped, as parsers do).
    started: bool,
    length: Option<u64>,
    chunked: bool,
    /// Chunk size read so far on a chunk-size line.
    size: u64,
    /// Whether the chunk-size line's digits have ended.
    digits_done: bool,
}

impl Framing {
    /// Framing with heads of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: State::Head,
            head: 0,
            line: Vec::new(),
            started: false,
            length: None,
            chunked: false,
            size: 0,
            digits_done: false,
        }
    }

    /// True between requests or inside a head: the next bytes are not a body.
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// True once part of a head arrived and the rest has not.
    pub fn head_begun(&self) -> bool {
        self.state == State::Head && self.head > 0
    }

    /// Follows `bytes` as the next bytes of the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Fed, FramingError> {
        let mut fed = Fed::default();
        while !bytes.is_empty() {
            match self.state {
                State::Head | State::Trailer => {
                    let (line_end, take) = up_to_line_end(bytes);
                    self.head += take;
                    if self.head > self.limit {
                        return Err(FramingError::HeadTooLarge);
                    }
                    let room = KEPT_LINE.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&bytes[..take.min(room)]);
                    bytes = &bytes[take..];
                    if line_end && self.end_line() {
                        fed.heads += 1;
                    }
                }
                State::Fixed(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if take == left {
                        State::Head
                    } else {
                        State::Fixed(left - take)
                    };
                }
                State::ChunkSize => {
                    let (line_end, take) = up_to_line_end(bytes);
                    for &b in &bytes[..take] {
                        // Digits end at an extension, a space or the line's end.
                        match (self.digits_done, (b as char).to_digit(16)) {
                            (false, Some(d)) => {
                                self.size = self.size.saturating_mul(16).saturating_add(d as u64)
                            }
                            _ => self.digits_done = true,
                        }
                    }
                    // A chunk-size line is bounded like a head line.
                    self.head += take;
                    if self.head > self.limit {
                        return Err(FramingError::HeadTooLarge);
                    }
                    bytes = &bytes[take..];
                    if line_end {
                        let size = std::mem::take(&mut self.size);
                        self.digits_done = false;
                        self.head = 0;
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::ChunkData(size)
                        };
                    }
                }
                State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if take == left {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - take)
                    };
                }
                State::ChunkEnd => {
                    // The CRLF after the data (a bare LF is taken too).
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if b == b'\n' {
                        self.state = State::ChunkSize;
                    }
                }
            }
        }
        Ok(fed)
    }

    /// A line of a head or trailer ended; true when it completed a head.
    fn end_line(&mut self) -> bool {
        let mut line = std::mem::take(&mut self.line);
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let done = if self.state == State::Trailer {
            if line.is_empty() {
                self.state = State::Head;
                self.head = 0;
            }
            false
        } else if line.is_empty() {
            if self.started {
                self.state = match (self.chunked, self.length) {
                    (true, _) => State::ChunkSize,
                    (false, Some(n)) if n > 0 => State::Fixed(n),
                    _ => State::Head,
                };
                self.head = 0;
                self.started = false;
                self.length = None;
                self.chunked = false;
                true
            } else {
                // Empty lines before a request line.
                self.head = 0;
                false
            }
        } else {
            if self.started {
                self.header(&line);
            }
            self.started = true;
            false
        };
        line.clear();
        self.line = line;
        done
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            self.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; the heads completed, or the
    /// error.
    fn heads(input: &[u8], limit: usize, step: usize) -> Result<usize, FramingError> {
        let mut f = Framing::new(limit);
        let mut n = 0;
        for piece in input.chunks(step) {
            n += f.feed(piece)?.heads;
        }
        Ok(n)
    }

    #[test]
    fn follows_requests_as_actix_frames_them() {
        let get = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        let post = b"POST /facts HTTP/1.1\r\nContent-Length: 5\r\n\r\n[{}]\n".to_vec();
        let chunked = b"POST /facts HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
            4;ext=1\r\n\r\n\r\n\r\n0\r\nx-trailer: y\r\n\r\n"
            .to_vec();
        // A body that looks like a head (it is 34 bytes of data).
        let body_like_head = b"POST /facts HTTP/1.1\r\ncontent-length: 34\r\n\r\n\
            GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
            .to_vec();
        let big_chunk = [
            b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1A\r\n".as_slice(),
            &[b'\n'; 26],
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        type Case = (&'static str, Vec<u8>, usize, Result<usize, FramingError>);
        let cases: Vec<Case> = vec![
            ("one GET", get.clone(), 64, Ok(1)),
            ("pipelined GETs", get.repeat(5), 64, Ok(5)),
            (
                "a body of Content-Length",
                [post.clone(), get.clone()].concat(),
                64,
                Ok(2),
            ),
            (
                "chunked with extension and trailer",
                [chunked.clone(), get.clone()].concat(),
                64,
                Ok(2),
            ),
            ("a body that looks like a head", body_like_head, 64, Ok(1)),
            (
                "chunk data of newlines, hex size",
                [big_chunk, get.clone()].concat(),
                64,
                Ok(2),
            ),
            (
                "empty lines before a request line",
                [b"\r\n\r\n".as_slice(), &get].concat(),
                64,
                Ok(1),
            ),
            ("a head exactly at the limit", get.clone(), get.len(), Ok(1)),
            (
                "a head one byte over",
                get.clone(),
                get.len() - 1,
                Err(FramingError::HeadTooLarge),
            ),
            (
                "an unfinished head over the limit",
                vec![b'a'; 100],
                64,
                Err(FramingError::HeadTooLarge),
            ),
            (
                "header lines over the limit",
                [b"GET / HTTP/1.1\r\n".as_slice(), &b"a: b\r\n".repeat(20)].concat(),
                64,
                Err(FramingError::HeadTooLarge),
            ),
            (
                "a trailer over the limit",
                [
                    b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n".as_slice(),
                    &b"t: x\r\n".repeat(20),
                ]
                .concat(),
                64,
                Err(FramingError::HeadTooLarge),
            ),
            (
                "an endless chunk-size line",
                [
                    b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".as_slice(),
                    &[b'f'; 100],
                ]
                .concat(),
                64,
                Err(FramingError::HeadTooLarge),
            ),
        ];
        for (what, input, limit, want) in cases {
            for step in [1, 3, 7, input.len()] {
                assert_eq!(
                    heads(&input, limit, step),
                    want,
                    "{what}, fed {step} at a time"
                );
            }
        }
    }

    #[test]
    fn knows_whether_the_next_bytes_are_a_head() {
        let mut f = Framing::new(1024);
        assert!(f.in_head() && !f.head_begun());
        f.feed(b"POST /facts HTTP/1.1\r\n").unwrap();
        assert!(f.head_begun());
        f.feed(b"content-length: 3\r\n\r\n").unwrap();
        assert!(!f.in_head());
        f.feed(b"[]").unwrap();
        assert!(!f.in_head());
        f.feed(b"\n").unwrap();
        assert!(f.in_head() && !f.head_begun());
    }
}
