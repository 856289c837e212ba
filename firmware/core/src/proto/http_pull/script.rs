//! A firmware server scripted for the pulls: the request out, a response head, the image in
//! TCP segments, the server's close. The pull paths' scripts (`esp_https_ota`'s, Homie 1.x's)
//! share it.

use super::{Client, Config, Endpoint, Event, Output, PullError};
use crate::script::{Ending, SEGMENT, ScriptError};
use crate::update::UpdateSink;

/// A pull's whole exchange: `url` requested, the response `head`, then `image` and the close.
pub fn download<S: UpdateSink>(
    client: &mut Client,
    cfg: &Config<'_>,
    url: &str,
    head: &str,
    image: &[u8],
    sink: &mut S,
    out: &mut PullOut<'_>,
) {
    client.start(url, out);
    client.connected(cfg, 0, out);
    client.data(cfg, head.as_bytes(), 0, sink, out);
    for piece in image.chunks(SEGMENT) {
        client.data(cfg, piece, 0, sink, out);
    }
    client.closed(cfg, sink, out);
}

/// The pull's events: the last image byte in, then complete or failed.
pub struct PullOut<'a> {
    on_received: &'a mut dyn FnMut(),
    total: u64,
    ending: Ending<PullError>,
}

impl<'a> PullOut<'a> {
    /// For an image of `total` bytes; `on_received` is called when its last byte is in.
    pub fn new(total: u64, on_received: &'a mut dyn FnMut()) -> Self {
        PullOut { on_received, total, ending: Ending::new() }
    }

    pub fn result(self) -> Result<(), ScriptError> {
        self.ending.result(|e| ScriptError::new(format_args!("pull failed: {}", e.name())))
    }
}

impl Output for PullOut<'_> {
    fn connect(&mut self, _to: Endpoint<'_>) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Progress { received, .. } if received == self.total => (self.on_received)(),
            Event::Complete(_) => self.ending.completed(),
            Event::Failed(e) => self.ending.failed(e),
            _ => {}
        }
    }
}
