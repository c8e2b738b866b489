//! Log set-up: plain or JSON lines, level from `RUST_LOG` (when set and not
//! empty) or `--log-level`. Plain lines never carry raw control characters:
//! a caller-chosen value with a newline or an escape sequence cannot forge a
//! line or colour a terminal.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The filter: `RUST_LOG` if it says something, else the flag's level.
pub fn filter(rust_log: Option<&str>, level: &str) -> EnvFilter {
    rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(level))
}

pub fn init(format: &str, level: &str) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        // serde_json escapes control characters itself.
        builder.json().init();
    } else if io::stdout().is_terminal() {
        builder.init();
    } else {
        builder
            .with_ansi(false)
            .with_writer(Escaping(io::stdout))
            .init();
    }
}

/// Writes each formatted line with control characters escaped (all but the
/// line's final newline).
pub struct Escaping<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter(self.0.make_writer())
    }
}

pub struct EscapingWriter<W>(W);

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `\n` inside a line becomes `\\n`, ESC `\\x1b`, and so on; a final
/// newline stays.
pub fn escape_line(buf: &[u8]) -> Vec<u8> {
    let (body, end) = match buf.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (buf, &b""[..]),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines_or_colour() {
        assert_eq!(
            escape_line(b"delete source=a\nINFO forged line \x1b[31mred\n"),
            b"delete source=a\\nINFO forged line \\x1b[31mred\n".to_vec()
        );
        assert_eq!(escape_line(b"plain\n"), b"plain\n".to_vec());
    }

    #[test]
    fn empty_rust_log_falls_back_to_the_flag() {
        assert_eq!(filter(Some(""), "debug").to_string(), "debug");
        assert_eq!(filter(Some("  "), "warn").to_string(), "warn");
        assert_eq!(filter(None, "info").to_string(), "info");
        assert_eq!(filter(Some("error"), "info").to_string(), "error");
    }
}
