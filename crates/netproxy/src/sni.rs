//! A small, bounds-checked parser for the TLS ClientHello, to read its SNI.
//!
//! Through a CONNECT tunnel (or SOCKS5) the proxy passes TLS through
//! untouched, but it reads the client's first flight: when it is a TLS
//! handshake, the server name the client asks for must be the name the
//! tunnel was allowed for. Otherwise a shared front end (a CDN serving an
//! allowed host) would serve any other site it hosts to a client that
//! names it in the SNI.
//!
//! The parser reads only what it was given, checks every length against
//! the bytes left, reassembles a ClientHello split over several records
//! and caps its size; on any input it returns, never panics.

/// The largest ClientHello the proxy waits for. Real ones are 200 bytes to
/// a few KiB (post-quantum key shares included).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The largest TLS record payload (2^14) plus the expansion TLS 1.2 allows.
const MAX_RECORD: usize = 16384 + 2048;

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST: u8 = 0x00;

/// Why the bytes are not (yet) a ClientHello with a readable SNI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    #[error("the TLS ClientHello is incomplete: read more bytes")]
    Incomplete,
    #[error("the stream does not start with a TLS handshake record")]
    NotTls,
    #[error("the first TLS handshake message is not a ClientHello")]
    NotClientHello,
    #[error("the TLS ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("the TLS ClientHello is malformed: {0}")]
    Malformed(&'static str),
}

/// Whether a stream starting with `first` is TLS: a handshake record of
/// protocol version 3.x. An empty buffer is not.
pub fn looks_like_tls(first: &[u8]) -> bool {
    match first {
        [] => false,
        [t] => *t == CONTENT_HANDSHAKE,
        [t, major, ..] => *t == CONTENT_HANDSHAKE && *major == 0x03,
    }
}

/// The server name of the ClientHello at the start of `buf`: `Ok(None)`
/// when the client sent none, [`ClientHelloError::Incomplete`] when more
/// bytes are needed. The name is returned lower case, without a trailing
/// dot; a name that is not a valid host name is
/// [`ClientHelloError::Malformed`].
pub fn parse_client_hello_sni(buf: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let handshake = reassemble(buf)?;
    let mut r = Reader::new(&handshake);
    let kind = r.u8()?;
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err(ClientHelloError::NotClientHello);
    }
    let len = r.u24()?;
    let body = r.bytes(len)?;
    parse_body(body)
}

/// Concatenates the payloads of the leading handshake records until they
/// hold one whole handshake message, and returns exactly that message.
fn reassemble(buf: &[u8]) -> Result<Vec<u8>, ClientHelloError> {
    if buf.is_empty() {
        return Err(ClientHelloError::Incomplete);
    }
    if !looks_like_tls(buf) {
        return Err(ClientHelloError::NotTls);
    }
    let mut r = Reader::new(buf);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let header = r.bytes(5).map_err(|_| ClientHelloError::Incomplete)?;
        if header[0] != CONTENT_HANDSHAKE {
            return Err(ClientHelloError::Malformed(
                "a non-handshake record came before the ClientHello ended",
            ));
        }
        if header[1] != 0x03 {
            return Err(ClientHelloError::Malformed("unknown record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(ClientHelloError::Malformed("bad record length"));
        }
        let payload = r.bytes(len).map_err(|_| ClientHelloError::Incomplete)?;
        out.extend_from_slice(payload);
        if out.len() >= 4 {
            if out[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::NotClientHello);
            }
            let want =
                4 + (usize::from(out[1]) << 16 | usize::from(out[2]) << 8 | usize::from(out[3]));
            if want > MAX_CLIENT_HELLO {
                return Err(ClientHelloError::TooLarge);
            }
            if out.len() >= want {
                out.truncate(want);
                return Ok(out);
            }
        }
        if out.len() > MAX_CLIENT_HELLO {
            return Err(ClientHelloError::TooLarge);
        }
    }
}

fn parse_body(body: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let malformed = ClientHelloError::Malformed;
    let mut r = Reader::new(body);
    let _legacy_version = r.u16().map_err(|_| malformed("no version"))?;
    r.bytes(32).map_err(|_| malformed("no random"))?;
    let session_len = usize::from(r.u8().map_err(|_| malformed("no session id"))?);
    if session_len > 32 {
        return Err(malformed("session id longer than 32 bytes"));
    }
    r.bytes(session_len)
        .map_err(|_| malformed("session id truncated"))?;
    let suites_len = usize::from(r.u16().map_err(|_| malformed("no cipher suites"))?);
    if suites_len < 2 || suites_len % 2 != 0 {
        return Err(malformed("bad cipher suites length"));
    }
    r.bytes(suites_len)
        .map_err(|_| malformed("cipher suites truncated"))?;
    let comp_len = usize::from(r.u8().map_err(|_| malformed("no compression methods"))?);
    if comp_len < 1 {
        return Err(malformed("no compression methods"));
    }
    r.bytes(comp_len)
        .map_err(|_| malformed("compression methods truncated"))?;
    if r.remaining() == 0 {
        // A ClientHello without extensions (SSL 3.0 style): no SNI.
        return Ok(None);
    }
    let ext_len = usize::from(
        r.u16()
            .map_err(|_| malformed("extensions length truncated"))?,
    );
    if ext_len != r.remaining() {
        return Err(malformed("extensions length does not match the message"));
    }
    let mut sni = None;
    while r.remaining() > 0 {
        let kind = r
            .u16()
            .map_err(|_| malformed("extension header truncated"))?;
        let len = usize::from(
            r.u16()
                .map_err(|_| malformed("extension header truncated"))?,
        );
        let data = r.bytes(len).map_err(|_| malformed("extension truncated"))?;
        if kind == EXT_SERVER_NAME {
            if sni.is_some() {
                return Err(malformed("two server_name extensions"));
            }
            sni = Some(parse_server_name(data)?);
        }
    }
    Ok(sni)
}

fn parse_server_name(data: &[u8]) -> Result<String, ClientHelloError> {
    let malformed = ClientHelloError::Malformed;
    let mut r = Reader::new(data);
    let list_len = usize::from(
        r.u16()
            .map_err(|_| malformed("server_name list truncated"))?,
    );
    if list_len != r.remaining() || list_len == 0 {
        return Err(malformed("server_name list length does not match"));
    }
    let mut host = None;
    while r.remaining() > 0 {
        let kind = r
            .u8()
            .map_err(|_| malformed("server_name entry truncated"))?;
        let len = usize::from(
            r.u16()
                .map_err(|_| malformed("server_name entry truncated"))?,
        );
        let name = r
            .bytes(len)
            .map_err(|_| malformed("server_name entry truncated"))?;
        if kind == NAME_TYPE_HOST {
            if host.is_some() {
                return Err(malformed("two host names in server_name"));
            }
            let text =
                std::str::from_utf8(name).map_err(|_| malformed("server name is not ASCII"))?;
            let name = crate::rules::normalize_name(text)
                .map_err(|_| malformed("server name is not a valid host name"))?;
            host = Some(name);
        }
    }
    host.ok_or(malformed("server_name has no host name"))
}

/// A cursor that never reads past the end of its slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Reading past the end of a [`Reader`].
struct Short;

impl From<Short> for ClientHelloError {
    fn from(_: Short) -> ClientHelloError {
        ClientHelloError::Malformed("message truncated")
    }
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.pos.checked_add(n).ok_or(Short)?;
        let out = self.buf.get(self.pos..end).ok_or(Short)?;
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Short> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Result<usize, Short> {
        let b = self.bytes(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// Builds a plausible TLS 1.3-style ClientHello record with `sni` (or none)
/// and `extra` padding bytes in a padding extension. For tests, here and in
/// the integration tests.
#[doc(hidden)]
pub fn build_client_hello(sni: Option<&str>, extra: usize) -> Vec<u8> {
    let mut exts: Vec<u8> = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let entry_len = 3 + name.len();
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&((2 + entry_len) as u16).to_be_bytes());
        exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
        exts.push(NAME_TYPE_HOST);
        exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
        exts.extend_from_slice(name);
    }
    // supported_versions: TLS 1.3.
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    // padding (21) with `extra` zero bytes.
    exts.extend_from_slice(&[0x00, 0x15]);
    exts.extend_from_slice(&(extra as u16).to_be_bytes());
    exts.extend(std::iter::repeat_n(0u8, extra));

    let mut body: Vec<u8> = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);

    let mut hs: Vec<u8> = vec![HANDSHAKE_CLIENT_HELLO];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);

    let mut out = Vec::new();
    for chunk in hs.chunks(16384) {
        out.extend_from_slice(&[CONTENT_HANDSHAKE, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_name() {
        let hello = build_client_hello(Some("Files.PythonHosted.org"), 0);
        assert_eq!(
            parse_client_hello_sni(&hello),
            Ok(Some("files.pythonhosted.org".to_string()))
        );
        // Trailing application data after the ClientHello is ignored.
        let mut more = hello.clone();
        more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        assert_eq!(
            parse_client_hello_sni(&more),
            Ok(Some("files.pythonhosted.org".to_string()))
        );
    }

    #[test]
    fn no_server_name() {
        assert_eq!(
            parse_client_hello_sni(&build_client_hello(None, 0)),
            Ok(None)
        );
        // No extensions at all.
        let mut body: Vec<u8> = vec![0x03, 0x03];
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
        let mut rec = vec![
            0x16,
            0x03,
            0x01,
            0x00,
            (body.len() + 4) as u8,
            0x01,
            0x00,
            0x00,
            body.len() as u8,
        ];
        rec.extend_from_slice(&body);
        assert_eq!(parse_client_hello_sni(&rec), Ok(None));
    }

    #[test]
    fn reassembles_a_hello_split_over_records() {
        let hello = build_client_hello(Some("example.org"), 20000);
        assert!(hello.len() > 16384 + 5 + 5, "two records");
        assert_eq!(
            parse_client_hello_sni(&hello),
            Ok(Some("example.org".to_string()))
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let hello = build_client_hello(Some("example.org"), 300);
        for n in 0..hello.len() {
            assert_eq!(
                parse_client_hello_sni(&hello[..n]),
                Err(ClientHelloError::Incomplete),
                "prefix of {n} bytes"
            );
        }
        let big = build_client_hello(Some("example.org"), 20000);
        for n in (0..big.len()).step_by(97) {
            assert_eq!(
                parse_client_hello_sni(&big[..n]),
                Err(ClientHelloError::Incomplete),
                "{n}"
            );
        }
    }

    #[test]
    fn mutations_never_panic() {
        let hello = build_client_hello(Some("example.org"), 40);
        for i in 0..hello.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] {
                let mut m = hello.clone();
                m[i] = v;
                let _ = parse_client_hello_sni(&m);
                let _ = parse_client_hello_sni(&m[..i]);
            }
        }
        // Pseudo-random garbage behind a plausible record header.
        let mut state: u32 = 0x1234_5678;
        for len in 0..600 {
            let mut buf = vec![0x16, 0x03, 0x01, (len >> 8) as u8, len as u8, 0x01];
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                buf.push(state as u8);
            }
            let _ = parse_client_hello_sni(&buf);
        }
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        assert_eq!(
            parse_client_hello_sni(b"GET / HTTP/1.1\r\n"),
            Err(ClientHelloError::NotTls)
        );
        assert_eq!(
            parse_client_hello_sni(&[0x16, 0x02]),
            Err(ClientHelloError::NotTls)
        );
        let mut server_hello = build_client_hello(Some("example.org"), 0);
        server_hello[5] = 0x02;
        assert_eq!(
            parse_client_hello_sni(&server_hello),
            Err(ClientHelloError::NotClientHello)
        );
        let huge = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff];
        assert_eq!(
            parse_client_hello_sni(&huge),
            Err(ClientHelloError::TooLarge)
        );
        let empty_record = [0x16, 0x03, 0x01, 0x00, 0x00];
        assert!(matches!(
            parse_client_hello_sni(&empty_record),
            Err(ClientHelloError::Malformed(_))
        ));
        assert!(looks_like_tls(&[0x16]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls(b"SSH-2.0"));
        assert!(!looks_like_tls(&[]));
    }

    #[test]
    fn refuses_bad_server_names() {
        for bad in ["127.0.0.1", "a b.org", "", "ex\u{e9}.org", "a..org"] {
            let hello = build_client_hello(Some(bad), 0);
            assert!(
                matches!(
                    parse_client_hello_sni(&hello),
                    Err(ClientHelloError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_two_server_names() {
        let one = build_client_hello(Some("a.org"), 0);
        // Duplicate the server_name extension by hand: find it after the
        // fixed fields (5 record + 4 handshake + 2 + 32 + 33 + 6 + 2 + 2).
        let start = 5 + 4 + 2 + 32 + 33 + 6 + 2 + 2;
        let ext_len = 4 + usize::from(u16::from_be_bytes([one[start + 2], one[start + 3]]));
        let ext = one[start..start + ext_len].to_vec();
        let mut body = one[9..].to_vec();
        let ext_off = start - 9;
        body.splice(ext_off..ext_off, ext.iter().copied());
        let total_ext =
            u16::from_be_bytes([body[ext_off - 2], body[ext_off - 1]]) as usize + ext_len;
        body[ext_off - 2..ext_off].copy_from_slice(&(total_ext as u16).to_be_bytes());
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        rec.push(0x01);
        rec.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        rec.extend_from_slice(&body);
        assert_eq!(
            parse_client_hello_sni(&rec),
            Err(ClientHelloError::Malformed("two server_name extensions"))
        );
    }
}
