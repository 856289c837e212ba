//! What the form's server answers with: its two pages (the form and the device's index, which
//! the success page's refresh goes to) and the short texts, each sent with its head. Every
//! response closes the connection, as `HTTPUpdateServer` ends its client after the upload.

use crate::proto::http_server::write_head;

/// The form: two file inputs, `firmware` and `filesystem`, each in its own multipart form that
/// posts to the page itself (`action=''`), as `HTTPUpdateServer`'s page; the accept lists are
/// its ESP32 ones. The markup is otahil's own.
pub const FORM_PAGE: &str = "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>\
<meta name='viewport' content='width=device-width,initial-scale=1'><title>Update</title></head><body>\
<h1>Update</h1>\
<form method='POST' action='' enctype='multipart/form-data'><label>Firmware:<br>\
<input type='file' accept='.bin,.bin.gz' name='firmware'></label> \
<input type='submit' value='Update Firmware'></form><br>\
<form method='POST' action='' enctype='multipart/form-data'><label>FileSystem:<br>\
<input type='file' accept='.bin,.bin.gz,.image' name='filesystem'></label> \
<input type='submit' value='Update FileSystem'></form></body></html>";

/// What a successful upload answers, exactly (`HTTPUpdateServer`'s `successResponse`): the
/// browser goes to `/` after 15 s, when the device runs the new image.
pub const SUCCESS_PAGE: &str =
    "<META http-equiv=\"refresh\" content=\"15;URL=/\">Update Success! Rebooting...";

/// What a failed upload's page begins with; the `Update` error's text follows, then CRLF
/// (ESP32's `printError`). Errors have status 200: a client reads the body.
pub const ERROR_PREFIX: &str = "Update error: ";

/// The challenge a missing or wrong `Authorization` gets (`requestAuthentication()`).
pub const CHALLENGE: (&str, &str) = ("WWW-Authenticate", "Basic realm=\"Login Required\"");

/// Sends a whole response: the head, then `pieces` as the body (not for HEAD).
pub fn respond(
    send: &mut dyn FnMut(&[u8]),
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    pieces: &[&str],
    head_only: bool,
) {
    let length: usize = pieces.iter().map(|p| p.len()).sum();
    write_head(send, status, Some(content_type), Some(length as u64), extra, true);
    if !head_only {
        for p in pieces {
            send(p.as_bytes());
        }
    }
}

/// The index: which image the device runs, and a link to the form.
pub fn index(send: &mut dyn FnMut(&[u8]), project: &str, version: &str, head_only: bool) {
    let (mut p, mut v) = ([0u8; 3 * 32 * 5], [0u8; 3 * 32 * 5]);
    let project = escape(project, &mut p);
    let version = escape(version, &mut v);
    let pieces = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>",
        project,
        "</title></head><body><h1 id='running'>",
        project,
        " version <span id='version'>",
        version,
        "</span></h1><p><a href='/update'>Update</a></p></body></html>",
    ];
    respond(send, 200, "text/html", &[], &pieces, head_only);
}

/// `text` with `<`, `>`, `&`, `'` and `"` as entities, in `buf` (cut where it runs out).
fn escape<'b>(text: &str, buf: &'b mut [u8]) -> &'b str {
    let mut n = 0;
    for c in text.chars() {
        let mut tmp = [0u8; 4];
        let piece = match c {
            '<' => "&lt;",
            '>' => "&gt;",
            '&' => "&amp;",
            '\'' => "&#39;",
            '"' => "&quot;",
            c => c.encode_utf8(&mut tmp),
        };
        if n + piece.len() > buf.len() {
            break;
        }
        buf[n..n + piece.len()].copy_from_slice(piece.as_bytes());
        n += piece.len();
    }
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    #[test]
    fn the_index_escapes_what_it_shows_and_lengths_the_body() {
        let mut out = Vec::new();
        super::index(&mut |b: &[u8]| out.extend_from_slice(b), "fw<x>", "1.0 & 'b'", false);
        let text = std::string::String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&std::format!("Content-Length: {}", body.len())), "{head}");
        assert!(
            body.contains("fw&lt;x&gt; version <span id='version'>1.0 &amp; &#39;b&#39;</span>"),
            "{body}"
        );
        assert!(head.contains("Connection: close"));
    }
}
