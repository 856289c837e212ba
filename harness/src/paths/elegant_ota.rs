//! ElegantOTA's portal: the harness is the page's script ([`crate::client::elegant_ota`]):
//! `/ota/start` with the mode and the file's MD5, then the upload to `/ota/upload`, with a
//! browser's faults (credentials, a bad or wrong hash, no start, the upload form's wire faults),
//! or a real Chromium at the page (`browser: true`).

use super::web_form::{RawAuth, RawStall, read_stall, section_credentials, step_credentials};
use super::{
    Needs, PathEntry, PathUpdate, ProvisionCx, ProvisionFailure, ReadCx, SectionEntry, Unavailable, UpdateCx,
};
use crate::client::Outcome;
use crate::client::elegant_ota::{PortalUpload, Start, error_names};
use crate::client::web_form::FormUpload;
use crate::scenario::yaml::{Ctx, Options, ScenarioError};
use ota_core::proto::UpdatePath;
use ota_core::provision::SettingsPage;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub use super::web_form::PORT;

pub const ENTRY: PathEntry = PathEntry {
    name: "elegant_ota",
    about: "ElegantOTA's portal: /ota/start with the file's MD5, then a multipart POST to /ota/upload",
    sweep: Some(UpdatePath::ElegantOta),
    outcomes: error_names,
    read,
    needs: Needs { broker: false, server: false },
    section: Some(SectionEntry { key: "elegant_ota", read: |o, cx| Ok(Arc::new(device_section(o, cx)?)) }),
};

/// `device: { elegant_ota: { user, password } }`: the device serves ElegantOTA on port 80.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSection {
    pub credentials: Option<(String, String)>,
}

fn device_section(options: Options, cx: &Ctx<'_>) -> Result<DeviceSection, ScenarioError> {
    Ok(DeviceSection { credentials: section_credentials(options, "elegant_ota", cx)? })
}

impl super::DeviceSection for DeviceSection {
    fn needs(&self) -> Needs {
        ENTRY.needs
    }

    fn provision(&self, _cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure> {
        use ota_core::proto::web_form::settings::{Pages, Provision};
        let (user, password) = match &self.credentials {
            Some((u, p)) => (Some(u.as_str()), Some(p.as_str())),
            None => (None, None),
        };
        page.path(&Provision { pages: Pages::ElegantOta, user, password })?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    auth: Option<RawAuth>,
    /// `firmware` (the default) or `filesystem`.
    #[serde(default)]
    mode: Option<String>,
    /// `correct` (the default: the file's MD5), `none`, or the text to send.
    #[serde(default)]
    hash: Option<String>,
    /// `false`: the upload without a start before it.
    #[serde(default)]
    start: Option<bool>,
    #[serde(default)]
    content_length: Option<u64>,
    #[serde(default)]
    disconnect_after: Option<u64>,
    #[serde(default)]
    stall: Option<RawStall>,
    #[serde(default)]
    send_delay: Option<crate::scenario::yaml::DurationText>,
    #[serde(default)]
    browser: Option<bool>,
}

/// What `hash` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// The image's MD5, as the page computes it.
    Correct,
    None,
    Text(String),
}

/// One update through the portal.
#[derive(Debug, Clone)]
pub struct PortalStep {
    pub credentials: Option<(String, String)>,
    pub filesystem: bool,
    pub hash: Hash,
    pub start: bool,
    pub content_length: Option<u64>,
    pub disconnect_after: Option<u64>,
    pub stall: Option<(u64, Duration)>,
    pub send_delay: Option<Duration>,
    pub browser: bool,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    let Some(section) = rx.sections.get::<DeviceSection>("elegant_ota") else {
        return cx.err(
            rx.line,
            rx.column,
            "ota via elegant_ota: the device serves no ElegantOTA: add `elegant_ota: {}` under `device`",
        );
    };
    super::web_form::one_page_set("elegant_ota", rx)?;
    let (raw, spans): (Raw, _) = options.rest("elegant_ota OTA steps", cx)?;
    let credentials = step_credentials(raw.auth, &section.credentials, &spans, cx)?;
    let filesystem = match raw.mode.as_deref() {
        None | Some("firmware") => false,
        Some("filesystem") => true,
        Some(m) => return spans.err(cx, "mode", format!("mode `{m}`: expected `firmware` or `filesystem`")),
    };
    let hash = match raw.hash {
        None => Hash::Correct,
        Some(h) if h == "correct" => Hash::Correct,
        Some(h) if h == "none" => Hash::None,
        Some(h) if !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Hash::Text(h)
        }
        Some(h) => {
            return spans.err(
                cx,
                "hash",
                format!("hash `{h}`: expected `correct`, `none`, or up to 128 letters and digits to send"),
            );
        }
    };
    let stall = read_stall(raw.stall, &spans, cx)?;
    let send_delay =
        super::duration_option(raw.send_delay.as_ref().map(|t| t.0.as_str()), "send_delay", &spans, cx)?;
    let browser = raw.browser.unwrap_or(false);
    if browser {
        let faults = [
            ("hash", hash != Hash::Correct),
            ("start", raw.start.is_some()),
            ("content_length", raw.content_length.is_some()),
            ("disconnect_after", raw.disconnect_after.is_some()),
            ("stall", stall.is_some()),
            ("send_delay", send_delay.is_some()),
        ];
        if let Some((key, _)) = faults.iter().find(|(_, set)| *set) {
            return spans.err(
                cx,
                key,
                format!("{key}: the harness client's fault, not a browser's (drop `browser: true`)"),
            );
        }
    }
    Ok(Arc::new(PortalStep {
        credentials,
        filesystem,
        hash,
        start: raw.start.unwrap_or(true),
        content_length: raw.content_length,
        disconnect_after: raw.disconnect_after,
        stall,
        send_delay,
        browser,
    }))
}

impl PathUpdate for PortalStep {
    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let endpoint = cx.endpoint(PORT)?;
        let file_name = if cx.file_name.contains('.') {
            cx.file_name.to_string()
        } else {
            format!("{}.bin", cx.file_name)
        };
        if self.browser {
            return self.in_browser(cx, endpoint, &file_name);
        }
        let hash = match &self.hash {
            Hash::Correct => Some(String::from_utf8_lossy(&ota_core::script::md5_hex(cx.image)).into_owned()),
            Hash::None => None,
            Hash::Text(t) => Some(t.clone()),
        };
        let up = PortalUpload {
            start: self.start.then_some(Start { mode: if self.filesystem { "fs" } else { "fr" }, hash }),
            upload: FormUpload {
                path: "/ota/upload",
                image: cx.image,
                file_name: &file_name,
                part: "file",
                credentials: self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                content_length: self.content_length,
                disconnect_after: self.disconnect_after,
                stall: self.stall,
                send_delay: self.send_delay,
                timeout: cx.timeout,
            },
        };
        Ok(cx.rt.block_on(crate::client::elegant_ota::upload(endpoint, &up)))
    }

    fn unavailable_here(&self) -> Option<String> {
        self.browser.then(crate::browser::available).and_then(Result::err).map(|e| e.to_string())
    }

    fn device_ends_session(&self, _outcome: &Outcome) -> bool {
        true
    }
}

impl PortalStep {
    /// The update from a headless Chromium: the portal loaded, the mode chosen, the file picked
    /// (the page's script hashes, starts and uploads it), then what the page says.
    fn in_browser(
        &self,
        cx: &UpdateCx<'_>,
        endpoint: std::net::SocketAddr,
        file_name: &str,
    ) -> Result<Outcome, Unavailable> {
        let url = format!("http://{endpoint}/update");
        let page = super::BrowserPage {
            url: &url,
            credentials: self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            input: "#file",
            submit: crate::browser::Submit::Script {
                before: self.filesystem.then_some("document.getElementById('mode-fs').checked = true"),
                start: None,
                result: "document.getElementById('status').textContent",
            },
            screenshot: "portal.png",
            follow: None,
        };
        let label = |p: &crate::browser::PageResult| {
            format!("after picking {file_name} in ElegantOTA's portal: {}", p.text.trim())
        };
        Ok(match super::in_browser(cx, file_name, &page, label)? {
            Ok(result) => judge_page(&result.text),
            Err(outcome) => outcome,
        })
    }
}

/// What the portal's status line says.
fn judge_page(text: &str) -> Outcome {
    use crate::client::Phase;
    let text = text.trim();
    if text.starts_with("Update successful") {
        return Outcome::Ok { detail: format!("the page said `{text}`") };
    }
    let detail = format!("the page said `{text}`");
    let Some(name) = text.strip_prefix("Update failed: ").and_then(crate::client::elegant_ota::error_name)
    else {
        return Outcome::Unexpected { detail, phase: Phase::End };
    };
    Outcome::DeviceError { name, detail, phase: Phase::End }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_judged_as_a_person_reads_it() {
        assert_eq!(judge_page("Update successful: the device restarts").name(), "ok");
        assert_eq!(judge_page("Update failed: Decryption error").name(), "decryption_error");
        assert_eq!(judge_page("Update failed: Partition Could Not be Found").name(), "no_partition");
        assert_eq!(judge_page("Update failed: the connection was lost").name(), "unexpected");
        assert_eq!(judge_page("").name(), "unexpected");
    }
}
