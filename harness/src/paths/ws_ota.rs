//! The WebSocket OTA page (`ota_ws_update`): the harness is the page's script
//! ([`crate::client::ws_ota`]): `otaSize`, the chunks the device asks for, `otaEnd`, the
//! restart, and then (`then: keep | roll_back`) the page's answer to the new image's
//! `otaCheckRollback` — with the page's faults (the declared size, other chunk sizes, a cancel,
//! a disconnect, a second tab).

use super::{
    Needs, PathEntry, PathUpdate, ProvisionCx, ProvisionFailure, ReadCx, SectionEntry, Unavailable, UpdateCx,
};
use crate::client::Outcome;
use crate::client::ws_ota::{PageUpload, Then, error_names};
use crate::dut::Port;
use crate::scenario::yaml::{Ctx, Options, ScenarioError};
use ota_core::boot::Confirm;
use ota_core::proto::UpdatePath;
use ota_core::provision::SettingsPage;
use serde::Deserialize;
use std::sync::Arc;

pub const PORT: Port = Port::Tcp(ota_core::proto::ws_ota::DEFAULT_PORT);

pub const ENTRY: PathEntry = PathEntry {
    name: "ws_ota",
    about: "the WebSocket OTA page (ota_ws_update): chunks asked for by offset, then confirm or roll back from the page",
    sweep: Some(UpdatePath::WsOta),
    outcomes: error_names,
    read,
    needs: Needs { broker: false, server: false },
    section: Some(SectionEntry { key: "ws_ota", read: |o, cx| Ok(Arc::new(device_section(o, cx)?)) }),
};

/// `device: { ws_ota: { confirm: page | self_test } }`: the device serves the page on port 80;
/// `confirm: page` makes a new image wait for the page's answer (a reset before it rolls back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSection {
    pub confirm: Confirm,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    #[serde(default)]
    confirm: Option<String>,
}

fn device_section(options: Options, cx: &Ctx<'_>) -> Result<DeviceSection, ScenarioError> {
    let (raw, spans): (RawSection, _) = options.rest("device `ws_ota`", cx)?;
    let confirm = match raw.confirm.as_deref() {
        None | Some("self_test") => Confirm::SelfTest,
        Some("page") => Confirm::App,
        Some(other) => {
            return spans.err(cx, "confirm", format!("confirm `{other}`: expected `page` or `self_test`"));
        }
    };
    Ok(DeviceSection { confirm })
}

impl super::DeviceSection for DeviceSection {
    fn needs(&self) -> Needs {
        ENTRY.needs
    }

    fn provision(&self, _cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure> {
        page.path(&ota_core::proto::ws_ota::settings::Provision { confirm: self.confirm })?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// What `otaSize` says instead of the image's length.
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default)]
    chunk_size: Option<u64>,
    #[serde(default)]
    cancel_after: Option<u64>,
    #[serde(default)]
    disconnect_after: Option<u64>,
    #[serde(default)]
    second_tab: Option<bool>,
    /// `leave` (the default), `keep` or `roll_back`.
    #[serde(default)]
    then: Option<String>,
    #[serde(default)]
    browser: Option<bool>,
}

/// One update through the page.
#[derive(Debug, Clone)]
pub struct PageStep {
    pub declared_size: Option<String>,
    pub chunk_size: Option<usize>,
    pub cancel_after: Option<u64>,
    pub disconnect_after: Option<u64>,
    pub second_tab: bool,
    pub then: Then,
    /// A real Chromium at the page instead of the harness's script.
    pub browser: bool,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    let Some(section) = rx.sections.get::<DeviceSection>("ws_ota") else {
        return cx.err(
            rx.line,
            rx.column,
            "ota via ws_ota: the device serves no WebSocket OTA page: add `ws_ota: {}` under `device`",
        );
    };
    super::web_form::one_page_set("ws_ota", rx)?;
    let (raw, spans): (Raw, _) = options.rest("ws_ota OTA steps", cx)?;
    let declared_size = match raw.size {
        None => None,
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::String(s)) if s.len() <= 64 && !s.contains(['"', '\\']) => {
            Some(format!("\"{s}\""))
        }
        Some(_) => {
            return spans.err(cx, "size", "size: expected a number, or up to 64 characters of text to send");
        }
    };
    let chunk_size = match raw.chunk_size {
        None => None,
        Some(n @ 1..=65536) => Some(n as usize),
        Some(n) => return spans.err(cx, "chunk_size", format!("chunk_size {n}: expected 1 to 65536 bytes")),
    };
    let then = match raw.then.as_deref() {
        None | Some("leave") => Then::Leave,
        Some("keep") => Then::Keep,
        Some("roll_back") => Then::RollBack,
        Some(other) => {
            return spans.err(cx, "then", format!("then `{other}`: expected `leave`, `keep` or `roll_back`"));
        }
    };
    if then != Then::Leave && section.confirm != Confirm::App {
        return spans.err(
            cx,
            "then",
            "then: the device confirms new images by their self-test, so its page offers no rollback: add `confirm: page` to the device's `ws_ota`",
        );
    }
    let browser = raw.browser.unwrap_or(false);
    if browser {
        let faults = [
            ("size", declared_size.is_some()),
            ("chunk_size", chunk_size.is_some()),
            ("cancel_after", raw.cancel_after.is_some()),
            ("disconnect_after", raw.disconnect_after.is_some()),
            ("second_tab", raw.second_tab.is_some()),
        ];
        if let Some((key, _)) = faults.iter().find(|(_, set)| *set) {
            return spans.err(
                cx,
                key,
                format!("{key}: the harness client's fault, not a browser's (drop `browser: true`)"),
            );
        }
    }
    Ok(Arc::new(PageStep {
        browser,
        declared_size,
        chunk_size,
        cancel_after: raw.cancel_after,
        disconnect_after: raw.disconnect_after,
        second_tab: raw.second_tab.unwrap_or(false),
        then,
    }))
}

impl PathUpdate for PageStep {
    fn unavailable_here(&self) -> Option<String> {
        self.browser.then(crate::browser::available).and_then(Result::err).map(|e| e.to_string())
    }

    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let endpoint = cx.endpoint(PORT)?;
        if self.browser {
            return self.in_browser(cx, endpoint);
        }
        let up = PageUpload {
            image: cx.image,
            declared_size: self.declared_size.clone(),
            chunk_size: self.chunk_size,
            cancel_after: self.cancel_after,
            disconnect_after: self.disconnect_after,
            second_tab: self.second_tab,
            then: self.then,
            timeout: cx.timeout,
            seed: cx.seed,
        };
        Ok(cx.rt.block_on(crate::client::ws_ota::upload(endpoint, &up)))
    }
}

/// The page's status line once it says how the upload went.
const UPLOAD_RESULT: &str = "(() => { const t = document.getElementById('status-text').textContent; \
    return t.startsWith('Update complete') || t.startsWith('Update failed') ? t : ''; })()";
/// Restart, pressed only where the page offers it (a hidden button still runs its handler).
const PRESS_RESTART: &str = "(() => { const b = document.getElementById('otaReStart'); \
    if (b.classList.contains('hidden')) return false; b.click(); return true; })()";
/// The page saw its socket close (the device restarting), or failed before Restart was offered.
const GONE: &str = "(() => { const t = document.getElementById('status-text').textContent; \
    return t.endsWith('reloading in 2 s') || t.startsWith('Update failed'); })()";
/// The reloaded page offers Keep and Roll back.
const OFFERED: &str = "!document.getElementById('rollback').classList.contains('hidden')";
/// Keep or Roll back pressed, and what the page says at once.
const ANSWER_KEEP: &str = "(() => { document.getElementById('otaVerifyApp').click(); \
    return document.getElementById('status-text').textContent; })()";
const ANSWER_ROLL_BACK: &str = "(() => { document.getElementById('otaRollback').click(); \
    return document.getElementById('status-text').textContent; })()";

impl PageStep {
    /// The update from a headless Chromium: the page loaded, the file picked, Start pressed; the
    /// status line read; Restart pressed; then, per `then`, the reloaded page's Keep or Roll back.
    fn in_browser(&self, cx: &UpdateCx<'_>, endpoint: std::net::SocketAddr) -> Result<Outcome, Unavailable> {
        let url = format!("http://{endpoint}{}", ota_core::proto::ws_ota::PAGE_PATH);
        let file_name = if cx.file_name.contains('.') {
            cx.file_name.to_string()
        } else {
            format!("{}.bin", cx.file_name)
        };
        let answer = match self.then {
            Then::Leave => None,
            Then::Keep => Some(ANSWER_KEEP),
            Then::RollBack => Some(ANSWER_ROLL_BACK),
        };
        let page = super::BrowserPage {
            url: &url,
            credentials: None,
            input: "#otaFile",
            submit: crate::browser::Submit::Script {
                before: None,
                start: Some("document.getElementById('otaStartCancel').click()"),
                result: UPLOAD_RESULT,
            },
            screenshot: "ws-page.png",
            follow: Some(crate::browser::FollowUp {
                press: PRESS_RESTART,
                gone: GONE,
                then: answer.map(|a| (OFFERED, a)),
                screenshot: None,
            }),
        };
        let label = |p: &crate::browser::PageResult| {
            format!(
                "after picking {file_name} on the WebSocket OTA page and pressing Start: {}",
                p.text.trim()
            )
        };
        Ok(match super::in_browser(cx, &file_name, &page, label)? {
            Ok(result) => judge_page(&result.text, result.answered.as_deref(), self.then),
            Err(outcome) => outcome,
        })
    }
}

/// What the page said, as a person reads it.
fn judge_page(text: &str, answered: Option<&str>, then: Then) -> Outcome {
    use crate::client::Phase;
    let text = text.trim();
    let detail = format!("the page said `{text}`");
    if let Some(error) = text.strip_prefix("Update failed: ") {
        return match crate::client::ws_ota::error_name(error) {
            Some(name) => Outcome::DeviceError { name, detail, phase: Phase::Data },
            None => Outcome::Unexpected { detail, phase: Phase::Data },
        };
    }
    if !text.starts_with("Update complete") {
        return Outcome::Unexpected { detail, phase: Phase::End };
    }
    let want = match then {
        Then::Leave => return Outcome::Ok { detail },
        Then::Keep => "New firmware kept",
        Then::RollBack => "Rolling back",
    };
    match answered.map(str::trim) {
        Some(a) if a.starts_with(want) => Outcome::Ok { detail: format!("{detail}, then `{a}`") },
        other => Outcome::Unexpected { detail: format!("{detail}, then {other:?}"), phase: Phase::End },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_judged_as_a_person_reads_it() {
        assert_eq!(judge_page("Update complete: restart to run it", None, Then::Leave).name(), "ok");
        assert_eq!(judge_page("Update failed: Error write ota", None, Then::Leave).name(), "write_failed");
        assert_eq!(judge_page("Update failed: something", None, Then::Leave).name(), "unexpected");
        assert_eq!(
            judge_page(
                "Update complete: restart to run it",
                Some("Rolling back to the previous firmware"),
                Then::RollBack
            )
            .name(),
            "ok"
        );
        assert_eq!(judge_page("Update complete: restart to run it", None, Then::Keep).name(), "unexpected");
    }
}
