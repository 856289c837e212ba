//! The Arduino `/update` form (`HTTPUpdateServer`): the harness is the browser. It posts the
//! image as the form's file ([`crate::client::web_form`]) and reads the page the device answers,
//! with a browser's faults: no or wrong credentials, the filesystem form, a `Content-Length`
//! that lies, a disconnect or a stall mid-upload.

use super::{
    Needs, PathEntry, PathUpdate, ProvisionCx, ProvisionFailure, ReadCx, SectionEntry, Unavailable, UpdateCx,
};
use crate::client::Outcome;
use crate::client::web_form::{FormUpload, error_names};
use crate::dut::Port;
use crate::scenario::yaml::{Ctx, Options, ScenarioError};
use ota_core::proto::UpdatePath;
use ota_core::proto::web_form::settings::MAX_CREDENTIAL_LEN;
use ota_core::provision::SettingsPage;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The device's web server port.
pub const PORT: Port = Port::Tcp(ota_core::proto::web_form::DEFAULT_PORT);

pub const ENTRY: PathEntry = PathEntry {
    name: "web_form",
    about: "the Arduino /update upload form (HTTPUpdateServer): a browser's multipart POST, the page says how it went",
    sweep: Some(UpdatePath::WebForm),
    outcomes: error_names,
    read,
    needs: Needs { broker: false, server: false },
    section: Some(SectionEntry { key: "web_form", read: |o, cx| Ok(Arc::new(device_section(o, cx)?)) }),
};

/// `device: { web_form: { user, password } }`: the device serves the form, asking for these
/// credentials when both are given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSection {
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn credential(
    value: Option<String>,
    key: &str,
    spans: &crate::scenario::yaml::Spans,
    cx: &Ctx<'_>,
) -> Result<Option<String>, ScenarioError> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_CREDENTIAL_LEN || v.contains(':') && key == "user" => spans
            .err(
                cx,
                key,
                format!(
                    "{key}: expected 1 to {MAX_CREDENTIAL_LEN} bytes{}",
                    if key == "user" { " without `:`" } else { "" }
                ),
            ),
        v => Ok(v),
    }
}

fn device_section(options: Options, cx: &Ctx<'_>) -> Result<DeviceSection, ScenarioError> {
    Ok(DeviceSection { credentials: section_credentials(options, "web_form", cx)? })
}

/// A web page set's section of `device:` (`{ user, password }`): its Basic credentials, both
/// or neither.
pub(super) fn section_credentials(
    options: Options,
    key: &str,
    cx: &Ctx<'_>,
) -> Result<Option<(String, String)>, ScenarioError> {
    let (raw, spans): (RawSection, _) = options.rest(&format!("device `{key}`"), cx)?;
    let user = credential(raw.user, "user", &spans, cx)?;
    let password = credential(raw.password, "password", &spans, cx)?;
    match (user, password) {
        (Some(u), Some(p)) => Ok(Some((u, p))),
        (None, None) => Ok(None),
        (Some(_), None) => spans.err(cx, "user", "user without password: the pages ask for both or neither"),
        (None, Some(_)) => {
            spans.err(cx, "password", "password without user: the pages ask for both or neither")
        }
    }
}

impl super::DeviceSection for DeviceSection {
    fn needs(&self) -> Needs {
        ENTRY.needs
    }

    fn provision(&self, _cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure> {
        let (user, password) = match &self.credentials {
            Some((u, p)) => (Some(u.as_str()), Some(p.as_str())),
            None => (None, None),
        };
        use ota_core::proto::web_form::settings::{Pages, Provision};
        page.path(&Provision { pages: Pages::Form, user, password })?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStall {
    after_bytes: u64,
    #[serde(rename = "for")]
    pause: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAuth {
    /// `auth: none`.
    Word(String),
    Credentials {
        user: String,
        password: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    part: Option<String>,
    #[serde(default)]
    content_length: Option<u64>,
    #[serde(default)]
    disconnect_after: Option<u64>,
    #[serde(default)]
    stall: Option<RawStall>,
    #[serde(default)]
    send_delay: Option<crate::scenario::yaml::DurationText>,
    /// A real Chromium picks the file and presses the form's button.
    #[serde(default)]
    browser: Option<bool>,
}

/// The sections that pick the page set on port 80: a device serves one.
const PAGE_SETS: [&str; 3] = ["web_form", "elegant_ota", "ws_ota"];

/// Refuses a step of page set `me` on a device that also has another page set's section.
pub(super) fn one_page_set(me: &str, rx: &super::ReadCx<'_>) -> Result<(), ScenarioError> {
    match PAGE_SETS.iter().find(|&&other| other != me && rx.sections.has(other)) {
        Some(other) => rx.cx.err(
            rx.line,
            rx.column,
            format!("{me} and {other} share port 80 (one web server on the chip): a device serves one page set (drop one section)"),
        ),
        None => Ok(()),
    }
}

/// The credentials a step sends: by default the ones the device asks for (the person at the
/// browser types them), `auth: none`, or `auth: { user, password }`.
pub(super) fn step_credentials(
    auth: Option<RawAuth>,
    device: &Option<(String, String)>,
    spans: &crate::scenario::yaml::Spans,
    cx: &Ctx<'_>,
) -> Result<Option<(String, String)>, ScenarioError> {
    match auth {
        None => Ok(device.clone()),
        Some(RawAuth::Word(w)) if w == "none" => Ok(None),
        Some(RawAuth::Word(w)) => {
            spans.err(cx, "auth", format!("auth `{w}`: expected `none` or {{ user: …, password: … }}"))
        }
        Some(RawAuth::Credentials { user, password }) => Ok(Some((user, password))),
    }
}

/// `stall: { after_bytes, for }`.
pub(super) fn read_stall(
    stall: Option<RawStall>,
    spans: &crate::scenario::yaml::Spans,
    cx: &Ctx<'_>,
) -> Result<Option<(u64, Duration)>, ScenarioError> {
    let Some(st) = stall else { return Ok(None) };
    match crate::scenario::yaml::parse_duration(&st.pause) {
        Ok(d) => Ok(Some((st.after_bytes, d))),
        Err(e) => spans.err(cx, "stall", crate::scenario::yaml::duration_message("stall for", &st.pause, e)),
    }
}

/// One upload through the form.
#[derive(Debug, Clone)]
pub struct FormStep {
    pub credentials: Option<(String, String)>,
    pub part: String,
    pub content_length: Option<u64>,
    pub disconnect_after: Option<u64>,
    pub stall: Option<(u64, Duration)>,
    pub send_delay: Option<Duration>,
    /// Upload from a headless Chromium instead of the harness's client.
    pub browser: bool,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    let Some(section) = rx.sections.get::<DeviceSection>("web_form") else {
        return cx.err(
            rx.line,
            rx.column,
            "ota via web_form: the device serves no upload form: add `web_form: {}` under `device`",
        );
    };
    one_page_set("web_form", rx)?;
    let (raw, spans): (Raw, _) = options.rest("web_form OTA steps", cx)?;
    let credentials = step_credentials(raw.auth, &section.credentials, &spans, cx)?;
    let part = match raw.part {
        None => "firmware".to_string(),
        Some(p) if !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic() && b != b'"') => {
            p
        }
        Some(p) => {
            return spans.err(
                cx,
                "part",
                format!("part `{p}`: expected a form field name (`firmware`, `filesystem`)"),
            );
        }
    };
    let stall = read_stall(raw.stall, &spans, cx)?;
    let send_delay =
        super::duration_option(raw.send_delay.as_ref().map(|t| t.0.as_str()), "send_delay", &spans, cx)?;
    let browser = raw.browser.unwrap_or(false);
    if browser {
        // A person in a browser picks a file and presses a button: the wire faults are the
        // harness client's.
        let faults = [
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
        if part != "firmware" && part != "filesystem" {
            return spans.err(
                cx,
                "part",
                "part: a browser uses the form's inputs, `firmware` or `filesystem`",
            );
        }
    }
    Ok(Arc::new(FormStep {
        credentials,
        part,
        content_length: raw.content_length,
        disconnect_after: raw.disconnect_after,
        stall,
        send_delay,
        browser,
    }))
}

impl PathUpdate for FormStep {
    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let endpoint = cx.endpoint(PORT)?;
        // A browser sends the name of the file picked from disk: images are `.bin` files.
        let file_name = if cx.file_name.contains('.') {
            cx.file_name.to_string()
        } else {
            format!("{}.bin", cx.file_name)
        };
        if self.browser {
            return self.in_browser(cx, endpoint, &file_name);
        }
        let upload = FormUpload {
            path: ota_core::proto::web_form::FORM_PATH,
            image: cx.image,
            file_name: &file_name,
            part: &self.part,
            credentials: self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            content_length: self.content_length,
            disconnect_after: self.disconnect_after,
            stall: self.stall,
            send_delay: self.send_delay,
            timeout: cx.timeout,
        };
        Ok(cx.rt.block_on(crate::client::web_form::upload(endpoint, &upload)))
    }

    fn unavailable_here(&self) -> Option<String> {
        self.browser.then(crate::browser::available).and_then(Result::err).map(|e| e.to_string())
    }

    /// A client that went away gets no answer; the device ends its side by itself (at once
    /// for a disconnect, after its data timeout for a stall).
    fn device_ends_session(&self, _outcome: &Outcome) -> bool {
        true
    }
}

impl FormStep {
    /// The upload from a headless Chromium: the form loaded, its inputs checked, the file picked
    /// and the form's button pressed; the next page read and its screenshot kept.
    fn in_browser(
        &self,
        cx: &UpdateCx<'_>,
        endpoint: std::net::SocketAddr,
        file_name: &str,
    ) -> Result<Outcome, Unavailable> {
        let url = format!("http://{endpoint}{}", ota_core::proto::web_form::FORM_PATH);
        let input = format!("input[type=file][name='{}']", self.part);
        let page = super::BrowserPage {
            url: &url,
            credentials: self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            input: &input,
            submit: crate::browser::Submit::FormButton,
            screenshot: &format!("{}-page.png", self.part),
            follow: None,
        };
        let label = |p: &crate::browser::PageResult| {
            format!("after uploading {file_name} through the {} form: {}", self.part, p.text.trim())
        };
        Ok(match super::in_browser(cx, file_name, &page, label)? {
            Ok(result) => judge_page(&result),
            Err(outcome) => outcome,
        })
    }
}

/// What the page a browser ended on says, after checking the form was the real one's.
fn judge_page(page: &crate::browser::PageResult) -> Outcome {
    use crate::client::Phase;
    use ota_core::proto::arduino::UpdateError;
    use ota_core::proto::web_form::pages::{ERROR_PREFIX, SUCCESS_PAGE};
    let want = [("firmware", ".bin,.bin.gz"), ("filesystem", ".bin,.bin.gz,.image")];
    let inputs: Vec<(&str, &str)> = page.inputs.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
    if inputs != want {
        let detail = format!("the form's file inputs {inputs:?}, expected {want:?}");
        return Outcome::Unexpected { detail, phase: Phase::Prepare };
    }
    let text = page.text.trim();
    // The success page's text, what a person reads (its <META> is not text).
    let success = SUCCESS_PAGE.rsplit('>').next().unwrap_or(SUCCESS_PAGE);
    if text == success {
        return match page.refresh.as_deref() {
            Some("15;URL=/") => {
                Outcome::Ok { detail: format!("the page said `{text}` and goes to / after 15 s") }
            }
            other => Outcome::Unexpected {
                detail: format!("the success page refreshes to {other:?}"),
                phase: Phase::End,
            },
        };
    }
    match text.strip_prefix(ERROR_PREFIX).and_then(UpdateError::from_reply) {
        Some(e) => Outcome::DeviceError {
            name: e.name(),
            detail: format!("the page said `{text}`"),
            phase: Phase::End,
        },
        None => Outcome::Unexpected { detail: format!("the page said `{text}`"), phase: Phase::End },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::PageResult;

    fn page(text: &str, refresh: Option<&str>) -> PageResult {
        PageResult {
            inputs: vec![
                ("firmware".into(), ".bin,.bin.gz".into()),
                ("filesystem".into(), ".bin,.bin.gz,.image".into()),
            ],
            text: text.into(),
            refresh: refresh.map(str::to_string),
            answered: None,
        }
    }

    #[test]
    fn a_page_is_judged_by_what_a_person_reads_on_it() {
        assert_eq!(judge_page(&page("Update Success! Rebooting...", Some("15;URL=/"))).name(), "ok");
        assert_eq!(judge_page(&page("Update Success! Rebooting...", None)).name(), "unexpected");
        assert_eq!(judge_page(&page("Update error: Decryption error", None)).name(), "decryption_error");
        assert_eq!(judge_page(&page("", None)).name(), "unexpected");
        let mut other = page("Update Success! Rebooting...", Some("15;URL=/"));
        other.inputs.pop();
        assert_eq!(
            judge_page(&other).name(),
            "unexpected",
            "a form without the filesystem input is not the real one"
        );
    }
}
