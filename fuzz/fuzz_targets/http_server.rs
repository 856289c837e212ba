//! The device's HTTP request reader and multipart reader under arbitrary bytes in arbitrary
//! pieces. Properties: no panic; a head is complete only within `HEAD_MAX` bytes, and what it
//! parses has a path that starts the target and at most `MAX_HEADERS` headers; a multipart
//! body's part bytes never include the delimiter, and a file sent in one part under a boundary
//! it does not contain comes out byte for byte however it is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::proto::http_server::multipart::{Delimiter, Event, Reader};
use ota_core::proto::http_server::{HEAD_MAX, HeadReader, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let piece = 1 + split as usize % 64;
    // A request head, in pieces.
    let mut head = HeadReader::default();
    let mut taken = 0;
    for chunk in rest.chunks(piece) {
        match head.feed(chunk) {
            Ok(Some(n)) => {
                assert!(n <= chunk.len() && taken + n <= HEAD_MAX);
                if let Ok(h) = head.head() {
                    assert!(h.target.starts_with(h.path));
                    assert!(h.headers().count() <= MAX_HEADERS);
                    let _ = (h.framing(), h.keep_alive(), h.query_param("hash"));
                }
                break;
            }
            Ok(None) => taken += chunk.len(),
            Err(_) => break,
        }
    }
    // The same bytes as a multipart body, then as one file in a well-formed body.
    let delimiter = Delimiter::new("xB").unwrap();
    let mut reader = Reader::new(delimiter);
    let mut part = Vec::new();
    let no_delimiter = |part: &[u8]| assert!(!part.windows(6).any(|w| w == b"\r\n--xB"));
    for chunk in rest.chunks(piece) {
        let ok = reader.feed(chunk, &mut |e| match e {
            Event::Data(d) => part.extend_from_slice(d),
            Event::PartEnd => {
                no_delimiter(&part);
                part.clear();
            }
            _ => {}
        });
        if ok.is_err() {
            break;
        }
    }
    no_delimiter(&part);
    if rest.windows(6).any(|w| w == b"\r\n--xB") {
        return;
    }
    let mut body = b"--xB\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n".to_vec();
    body.extend_from_slice(rest);
    body.extend_from_slice(b"\r\n--xB--");
    let mut reader = Reader::new(delimiter);
    let mut got = Vec::new();
    for chunk in body.chunks(piece) {
        reader
            .feed(chunk, &mut |e| {
                if let Event::Data(d) = e {
                    got.extend_from_slice(d)
                }
            })
            .unwrap();
    }
    assert!(reader.finished());
    assert_eq!(got, rest);
});
