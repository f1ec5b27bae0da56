//! Following a chunked body to its end without buffering it.

/// Where a chunked body ends (RFC 9112 §7.1): chunk-size lines, chunk data
/// and its CRLF, the last (zero) chunk, then trailer lines up to a blank one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// In a chunk-size line: the size so far, whether a digit was seen, and
    /// whether the extensions after it began.
    Size { size: u64, digits: bool, ext: bool },
    /// In chunk data: this many bytes to go.
    Data(u64),
    /// After chunk data: the CRLF (`true`: the CR was seen).
    DataEnd(bool),
    /// In the trailers: bytes on the current line (CR aside).
    Trailer(usize),
}

/// What feeding bytes to [`Chunks`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// The body goes on past these bytes.
    More,
    /// The body ends after this many of them.
    Done(usize),
    /// Not a chunked body hyper would accept; tracking stops.
    Lost,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::Size {
            size: 0,
            digits: false,
            ext: false,
        }
    }
}

impl Chunks {
    /// Follows the body through `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self {
                Chunks::Data(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        *self = Chunks::DataEnd(false);
                    }
                    continue;
                }
                Chunks::Size { size, digits, ext } => match b {
                    b'\n' => {
                        if !*digits {
                            return Fed::Lost;
                        }
                        *self = if *size == 0 {
                            Chunks::Trailer(0)
                        } else {
                            Chunks::Data(*size)
                        };
                    }
                    _ if *ext => {}
                    b';' | b' ' | b'\t' | b'\r' => *ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) => {
                            let Some(next) = size.checked_mul(16).map(|v| v + u64::from(d)) else {
                                return Fed::Lost;
                            };
                            *size = next;
                            *digits = true;
                        }
                        None => return Fed::Lost,
                    },
                },
                Chunks::DataEnd(cr) => match b {
                    b'\r' if !*cr => *cr = true,
                    b'\n' => *self = Chunks::default(),
                    _ => return Fed::Lost,
                },
                Chunks::Trailer(len) => match b {
                    b'\n' if *len == 0 => return Fed::Done(i + 1),
                    b'\n' => *len = 0,
                    b'\r' => {}
                    _ => *len += 1,
                },
            }
            i += 1;
        }
        Fed::More
    }
}
