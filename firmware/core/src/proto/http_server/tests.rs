use super::multipart::{Delimiter, Event, MultipartError, Reader};
use super::*;
use std::string::String;
use std::vec::Vec;

fn read_head(bytes: &[u8], piece: usize) -> Result<(usize, HeadReader), HeadError> {
    let mut r = HeadReader::default();
    let mut at = 0;
    for chunk in bytes.chunks(piece.max(1)) {
        if let Some(n) = r.feed(chunk)? {
            return Ok((at + n, r));
        }
        at += chunk.len();
    }
    Err(HeadError::Malformed)
}

#[test]
fn a_browsers_upload_head_in_any_pieces() {
    let request = b"POST /update?x=1&hash=ab12 HTTP/1.1\r\nHost: 10.0.2.15\r\nContent-Type: multipart/form-data; boundary=----WebKitFormBoundaryx7\r\nContent-Length: 423400\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n------WebKit";
    let head_len = request.len() - "------WebKit".len();
    for piece in [1, 2, 3, 7, 64, 1000] {
        let (end, r) = read_head(request, piece).unwrap();
        assert_eq!(end, head_len, "piece {piece}: the body starts right after the blank line");
        let h = r.head().unwrap();
        assert_eq!((h.method, h.path, h.query, h.http11), (Method::Post, "/update", "x=1&hash=ab12", true));
        assert_eq!(
            h.header("content-type").unwrap(),
            "multipart/form-data; boundary=----WebKitFormBoundaryx7"
        );
        assert_eq!(h.header("HOST"), Some("10.0.2.15"));
        assert_eq!(h.framing(), Ok(Framing::Length(423_400)));
        assert_eq!((h.query_param("hash"), h.query_param("mode")), (Some("ab12"), None));
        assert!(h.keep_alive());
    }
    // Bare line feeds, as lenient servers take them, and an empty line before the request.
    let (_, r) = read_head(b"\r\nGET / HTTP/1.0\nConnection: keep-alive\n\n", 5).unwrap();
    let h = r.head().unwrap();
    assert_eq!(
        (h.method, h.http11, h.keep_alive(), h.framing()),
        (Method::Get, false, true, Ok(Framing::None))
    );
}

#[test]
fn heads_that_are_refused_say_with_which_status() {
    let err =
        |text: &str| read_head(text.as_bytes(), 13).and_then(|(_, r)| r.head().map(|_| ())).unwrap_err();
    let framing = |text: &str| {
        let (_, r) = read_head(text.as_bytes(), 1000).unwrap();
        r.head().unwrap().framing()
    };
    assert_eq!(err("GET / HTTP/2.0\r\n\r\n").status(), 505);
    assert_eq!(err("GET / FTP/1.0\r\n\r\n").status(), 400);
    assert_eq!(err("GET  / HTTP/1.1\r\n\r\n"), HeadError::Malformed);
    assert_eq!(err("get / HTTP/1.1\r\n\r\n"), HeadError::Malformed);
    assert_eq!(err("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), HeadError::Malformed);
    assert_eq!(err("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), HeadError::Malformed);
    assert_eq!(err("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), HeadError::Malformed);
    assert_eq!(err("GET / HTTP/1.1\r\nA: \x01\r\n\r\n"), HeadError::Malformed);
    let many: String = (0..MAX_HEADERS + 1).map(|i| std::format!("H{i}: v\r\n")).collect();
    assert_eq!(err(&std::format!("GET / HTTP/1.1\r\n{many}\r\n")).status(), 431);
    // An endless head: refused at HEAD_MAX wherever the pieces stop.
    let endless = std::format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(5000));
    for piece in [1, 100, 5000] {
        assert_eq!(
            read_head(endless.as_bytes(), piece).map(|_| ()),
            Err(HeadError::TooLarge),
            "piece {piece}"
        );
    }
    // A head of exactly HEAD_MAX bytes is taken.
    let pad = HEAD_MAX - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
    let exact = std::format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
    assert_eq!(read_head(exact.as_bytes(), 64).unwrap().0, HEAD_MAX);
    assert_eq!(
        framing("POST / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n"),
        Ok(Framing::Length(1_000_000_000_000))
    );
    for bad in ["-1", "1 2", "0x10", "", "99999999999999999999", "+5"] {
        assert_eq!(
            framing(&std::format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n")),
            Err(HeadError::Length),
            "{bad:?}"
        );
    }
    assert_eq!(
        framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        Err(HeadError::Length)
    );
    assert_eq!(
        framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
        Ok(Framing::Length(5))
    );
    assert_eq!(
        framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(HeadError::Length)
    );
    assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Ok(Framing::Chunked));
    assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err().status(), 501);
}

/// What a reader makes of `body` fed in pieces of `piece` bytes: its events as text, parts'
/// bytes joined.
fn read_body(boundary: &str, body: &[u8], piece: usize) -> Result<(Vec<String>, bool), MultipartError> {
    let mut r = Reader::new(Delimiter::new(boundary)?);
    let mut events: Vec<String> = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for chunk in body.chunks(piece.max(1)) {
        r.feed(chunk, &mut |e| match e {
            Event::Data(d) => data.extend_from_slice(d),
            other => {
                if !data.is_empty() {
                    events.push(std::format!("data {:?}", String::from_utf8_lossy(&data)));
                    data.clear();
                }
                events.push(std::format!("{other:?}"));
            }
        })?;
    }
    if !data.is_empty() {
        events.push(std::format!("data {:?}", String::from_utf8_lossy(&data)));
    }
    Ok((events, r.finished()))
}

#[test]
fn a_form_upload_in_any_pieces() {
    // The file's bytes hold everything that looks like a delimiter but is not one.
    let file = "\r\n--b\r\n--Bn\r\n-X--Bnd-\r\r\n--Bn";
    let body = std::format!(
        "preamble\r\n--Bnd\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"v2.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n{file}\r\n--Bnd\r\ncontent-disposition: form-data; name=note\r\n\r\nhi\r\n--Bnd--\r\nepilogue"
    );
    let want = [
        "PartStart { name: \"firmware\", filename: Some(\"v2.bin\"), content_type: Some(\"application/octet-stream\") }"
            .into(),
        std::format!("data {file:?}"),
        "PartEnd".into(),
        "PartStart { name: \"note\", filename: None, content_type: None }".into(),
        "data \"hi\"".into(),
        "PartEnd".into(),
        "End".into(),
    ];
    for piece in 1..=body.len() {
        let (events, finished) =
            read_body("Bnd", body.as_bytes(), piece).unwrap_or_else(|e| panic!("piece {piece}: {e:?}"));
        assert_eq!(events, want, "piece {piece}");
        assert!(finished);
    }
    // curl's form: no preamble, the body starts with the delimiter; an empty file.
    let curl =
        "--x\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"e.bin\"\r\n\r\n\r\n--x--\r\n";
    let (events, finished) = read_body("x", curl.as_bytes(), 3).unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(finished && events[1] == "PartEnd");
}

#[test]
fn bodies_that_are_refused_or_cut() {
    let cut = "--x\r\nContent-Disposition: form-data; name=\"firmware\"\r\n\r\nabc\r\n--";
    let (events, finished) = read_body("x", cut.as_bytes(), 4).unwrap();
    assert!(!finished, "a body without its closing delimiter is cut short: {events:?}");
    assert_eq!(
        read_body("x", b"--x\r\nContent-Type: a/b\r\n\r\nz", 5).map(|_| ()),
        Err(MultipartError::BadPartHead)
    );
    assert_eq!(read_body("x", b"--x\r\n\r\nz", 5).map(|_| ()), Err(MultipartError::BadPartHead));
    assert_eq!(
        read_body("x", b"--x\r\nContent-Disposition: attachment; name=a\r\n\r\n", 5).map(|_| ()),
        Err(MultipartError::BadPartHead)
    );
    assert_eq!(read_body("x", b"--xZ", 1).map(|_| ()), Err(MultipartError::Malformed));
    let endless = std::format!("--x\r\nContent-Disposition: form-data; name=a\r\nX: {}", "y".repeat(600));
    assert_eq!(read_body("x", endless.as_bytes(), 50).map(|_| ()), Err(MultipartError::PartHeadTooLarge));
    for ct in ["text/plain", "multipart/form-data", "multipart/form-data; charset=utf-8"] {
        assert_eq!(Delimiter::of_content_type(ct).map(|_| ()), Err(MultipartError::NotMultipart), "{ct}");
    }
    let long = "b".repeat(71);
    for b in ["", long.as_str(), "a\"b", "end "] {
        assert_eq!(Delimiter::new(b).map(|_| ()), Err(MultipartError::BadBoundary), "{b:?}");
    }
    assert!(Delimiter::of_content_type("Multipart/Form-Data; boundary=\"a b\"").is_ok());
}

/// Seeded: files full of near-delimiters, split anywhere, come out byte for byte.
#[test]
fn random_files_in_random_pieces_come_out_whole() {
    let seed = 0x5eed_0001_u64;
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"\r\n-Bnd\r\nx";
    for run in 0..300 {
        let len = (next() % 2000) as usize;
        let file: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
        // A file that holds the delimiter itself cannot be sent with this boundary (a client
        // picks another); skip those.
        if file.windows(7).any(|w| w == b"\r\n--Bnd") {
            continue;
        }
        let mut body =
            b"--Bnd\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"f\"\r\n\r\n".to_vec();
        body.extend_from_slice(&file);
        body.extend_from_slice(b"\r\n--Bnd--\r\n");
        let mut r = Reader::new(Delimiter::new("Bnd").unwrap());
        let mut got = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let n = 1 + (next() % 300) as usize;
            let end = (at + n).min(body.len());
            r.feed(&body[at..end], &mut |e| {
                if let Event::Data(d) = e {
                    got.extend_from_slice(d)
                }
            })
            .unwrap_or_else(|e| panic!("seed {seed:#x} run {run}: {e:?}"));
            at = end;
        }
        assert!(r.finished(), "seed {seed:#x} run {run}");
        assert_eq!(got, file, "seed {seed:#x} run {run}");
    }
}

#[test]
fn basic_credentials_match_only_exactly() {
    // The spec's vector: admin:admin.
    assert!(basic_auth_matches(Some("Basic YWRtaW46YWRtaW4="), "admin", "admin"));
    assert!(basic_auth_matches(Some("basic  YWRtaW46YWRtaW4= "), "admin", "admin"));
    for wrong in [
        None,
        Some("Basic YWRtaW46YWRtaW4"),   // not a multiple of four
        Some("Basic YWRtaW46YWRtaW8="),  // admin:admio
        Some("Digest YWRtaW46YWRtaW4="), // another scheme
        Some("Basic YWRtaW46YWRtaW4=\u{0}"),
        Some("Basic ====YWRtaW46YWRtaW4="),
        Some("Basic"),
    ] {
        assert!(!basic_auth_matches(wrong, "admin", "admin"), "{wrong:?}");
    }
    assert!(!basic_auth_matches(Some("Basic YWRtaW46YWRtaW4="), "admin", "admi"));
    assert!(!basic_auth_matches(Some("Basic YWRtaW46YWRtaW4="), "admin:admin", ""));
    // Longer than the device keeps: refused, not overflowed.
    let long = "QUFB".repeat(100);
    assert!(!basic_auth_matches(Some(&std::format!("Basic {long}")), "a", "b"));
}

#[test]
fn a_response_head_as_the_pages_send_it() {
    let mut out = Vec::new();
    write_head(
        &mut |b| out.extend_from_slice(b),
        401,
        Some("text/html"),
        Some(0),
        &[("WWW-Authenticate", "Basic realm=\"Login Required\"")],
        true,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/html\r\nContent-Length: 0\r\nWWW-Authenticate: Basic realm=\"Login Required\"\r\nConnection: close\r\n\r\n"
    );
}
