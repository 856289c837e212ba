//! Whole updates without sockets, for the power-cut sweep: each path's uploader (or server)
//! side scripted in its own module (`proto::<path>::script`), fed to the device's own state
//! machine writing through the device's update sink, so a cut lands where the real protocol
//! puts its flash operations. [`UpdatePath::script`](crate::proto::UpdatePath::script) picks
//! the path's script; this module knows no path.

use core::fmt::{self, Write};

/// What an uploader sends per socket write (`espota2.py`, `espota.py`).
pub const PIECE: usize = 1024;
/// What a peer's stream brings per read: one TCP segment.
pub const SEGMENT: usize = 1460;

/// One scripted update: `image` (MD5 `md5_hex`) into the device on `flash` running as
/// `target` says; `on_received` is called when the image's last byte is written, before the
/// boot switch.
pub struct Upload<'a, F> {
    pub flash: &'a mut F,
    pub target: &'a crate::session::Target<'a>,
    pub image: &'a [u8],
    pub md5_hex: [u8; 32],
    pub on_received: &'a mut dyn FnMut(),
}

/// Why a scripted update did not complete: the device's own word on it, as text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ScriptError {
    text: Text<96>,
}

impl ScriptError {
    /// The session ended without completing and without saying why.
    pub fn incomplete() -> Self {
        Self::new(format_args!("Incomplete"))
    }

    /// A failure described by `args` (cut at 96 bytes).
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut text = Text::new();
        let _ = text.write_fmt(args);
        ScriptError { text }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.as_str())
    }
}

impl fmt::Debug for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScriptError({:?})", self.text.as_str())
    }
}

/// How a scripted session ended: complete, or with the device's first failure event.
pub struct Ending<E> {
    complete: bool,
    failure: Option<E>,
}

impl<E> Ending<E> {
    pub fn new() -> Self {
        Ending { complete: false, failure: None }
    }

    pub fn completed(&mut self) {
        self.complete = true;
    }

    /// Keeps the first failure: what follows it is its consequence.
    pub fn failed(&mut self, event: E) {
        self.failure.get_or_insert(event);
    }

    /// `Ok` when complete; else the failure as `describe` words it.
    pub fn result(self, describe: impl FnOnce(E) -> ScriptError) -> Result<(), ScriptError> {
        match (self.complete, self.failure) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(describe(e)),
            (false, None) => Err(ScriptError::incomplete()),
        }
    }
}

impl<E> Default for Ending<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Text written into a fixed buffer, cut at `N` bytes (on a character boundary).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text { bytes: [0; N], len: 0 }
    }

    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() { Err(fmt::Error) } else { Ok(()) }
    }
}

/// Authentication is off in scripted updates: no nonce is ever drawn (zeros if one were).
/// Each path with nonces implements its own `NonceSource` for it.
pub struct NoNonce;

/// `bytes`' MD5 in lowercase hex, as the uploaders announce it.
pub fn md5_hex(bytes: &[u8]) -> [u8; 32] {
    use md5::{Digest, Md5};
    let digest: [u8; 16] = Md5::digest(bytes).into();
    let mut hex = [0u8; 32];
    crate::hex::encode_lower(&digest, &mut hex);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        use std::string::ToString;
        let mut t = Text::<5>::new();
        assert!(write!(t, "ab").is_ok());
        assert!(write!(t, "cdé!").is_err(), "full");
        assert_eq!(t.as_str(), "abcd", "é would not fit whole");
        let e = ScriptError::new(format_args!("pull failed: {}", "x".repeat(200).as_str()));
        assert_eq!(e.to_string().len(), 96);
        assert_eq!(ScriptError::incomplete().to_string(), "Incomplete");
    }
}
