//! The service steps any scenario may use, whatever its paths: what the firmware server serves
//! (`serve`) and was asked (`expect_request`), what is published to the run's broker
//! (`mqtt_publish`, for any device with a broker session), the broker going away and coming
//! back (`broker`), and the pull's status schema on its state topic (`expect_status`, for a
//! device with the pull's `mqtt:` section). As written in YAML, and checked into the model the
//! runner plays.

use super::{Ctx, Image, ScenarioError, duration_message, parse_duration};
use crate::paths::mqtt_pull::topic;
use crate::services::firmware_server::{Fault, Framing, Md5Header, RangeSupport, Response, Route};
pub use crate::services::test_pki::CertKind;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::sync::Arc;
use std::time::Duration;

/// The text `{server}` in a published payload (or a redirect's target) stands for the firmware
/// server's base URL as the device reaches it (`http://10.0.2.2:41234` under QEMU,
/// `http://127.0.0.1:41234` on the emulator); `{https}` for its HTTPS listener with a certificate
/// from the test CA, and `{https_untrusted}`, `{https_wrong_name}`, `{https_expired}`,
/// `{https_tls12}` for the listeners with the certificate faults ([`CertKind`]).
pub const SERVER_PLACEHOLDER: &str = "{server}";

/// The https listeners `text` names by placeholder; an unknown `{https…}` placeholder is an error.
pub fn https_placeholders(text: &str) -> Result<Vec<CertKind>, String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("{https") {
        let end = text[at..].find('}').map(|e| at + e + 1).unwrap_or(text.len());
        let name = &text[at..end];
        match CertKind::ALL.iter().find(|k| k.placeholder() == name) {
            Some(k) => found.push(*k),
            None => {
                let known: Vec<_> = CertKind::ALL.iter().map(|k| k.placeholder()).collect();
                return Err(format!(
                    "placeholder `{name}`: expected {SERVER_PLACEHOLDER} or one of {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(found)
}

// ---- the YAML as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServe {
    path: Spanned<String>,
    #[serde(default)]
    image: Option<Spanned<String>>,
    #[serde(default)]
    // Wider than a status so that any number is refused with the statuses there are.
    status: Option<Spanned<u64>>,
    #[serde(default)]
    redirect: Option<Spanned<String>>,
    #[serde(default)]
    not_modified: bool,
    #[serde(default)]
    framing: Option<FramingSpec>,
    #[serde(default)]
    chunk: Option<Spanned<u32>>,
    #[serde(default)]
    md5: Option<Spanned<String>>,
    #[serde(default)]
    truncate_at: Option<u64>,
    #[serde(default)]
    reset_at: Option<u64>,
    #[serde(default)]
    claim_length: Option<u64>,
    #[serde(default)]
    stall: Option<RawStallAt>,
    #[serde(default)]
    drip: Option<RawDrip>,
    #[serde(default)]
    range: Option<RangeSpec>,
}

/// How the server answers a `Range` request for an image.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RangeSpec {
    /// 206 with the rest (the default, as nginx or S3 answer).
    Honour,
    /// 200 with the whole image, as a server without range support does.
    Ignore,
    /// 416 whatever was asked.
    Unsatisfiable,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FramingSpec {
    ContentLength,
    Chunked,
    Close,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStallAt {
    after_bytes: u64,
    #[serde(rename = "for")]
    pause: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrip {
    chunk: u32,
    every: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    #[serde(default)]
    topic: Option<Spanned<String>>,
    payload: Spanned<String>,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    cut_power: Option<super::RawCut>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpectStatus {
    state: Spanned<String>,
    #[serde(default)]
    err: Option<String>,
    #[serde(default)]
    fw: Option<String>,
    /// The share of the image the status reports, in whole percent.
    #[serde(default)]
    progress: Option<Spanned<u64>>,
    #[serde(default)]
    timeout: Option<Spanned<crate::scenario::yaml::DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpectRequest {
    path: String,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    absent_headers: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BrokerAction {
    /// Every connection drops and new ones are refused (mosquitto stopped, a network split).
    GoAway,
    ComeBack,
}

impl BrokerAction {
    /// As a scenario writes it.
    pub fn name(self) -> &'static str {
        match self {
            BrokerAction::GoAway => "go_away",
            BrokerAction::ComeBack => "come_back",
        }
    }
}

// ---- the checked model ---------------------------------------------------------------------

/// What the firmware server answers at a path.
#[derive(Debug, Clone)]
pub struct ServeStep {
    pub path: String,
    /// The image's name, when it serves one (for labels; its bytes are in the route).
    pub image: Option<Image>,
    pub route: Route,
}

#[derive(Debug, Clone)]
pub struct PublishStep {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    /// Armed before publishing; the step then waits for it to fire (the update it triggers is
    /// cut as an `ota` step's would be).
    pub cut_power: Option<(super::CutPower, Option<u64>)>,
}

#[derive(Debug, Clone)]
pub struct ExpectStatusStep {
    pub state: State,
    pub err: Option<String>,
    pub fw: Option<String>,
    /// Bytes over total in whole percent; a status without a length never matches.
    pub progress: Option<u64>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ExpectRequestStep {
    pub path: String,
    pub count: Option<u32>,
    pub headers: Vec<(String, String)>,
    pub absent_headers: Vec<String>,
}

pub use ota_core::proto::mqtt::status::State;

// ---- loading -------------------------------------------------------------------------------

pub(super) fn serve(raw: RawServe, cx: &Ctx<'_>) -> Result<ServeStep, ScenarioError> {
    if !raw.path.value.starts_with('/') {
        return cx.at(
            &raw.path,
            format!("path `{}`: expected an absolute path such as /fw/v2.bin", raw.path.value),
        );
    }
    let answers = [
        raw.image.is_some(),
        raw.redirect.is_some(),
        raw.not_modified,
        raw.status.is_some() && raw.redirect.is_none(),
    ];
    if answers.iter().filter(|a| **a).count() != 1 {
        return cx.at(&raw.path, "serve: expected exactly one answer: `image`, `status`, `redirect` (with an optional `status`) or `not_modified: true`");
    }
    let mut image = None;
    let response = if let Some(i) = &raw.image {
        let img = cx.image(i)?;
        let framing = match (raw.framing, &raw.chunk) {
            (None | Some(FramingSpec::ContentLength), None) => Framing::ContentLength,
            (Some(FramingSpec::Chunked), None) => Framing::Chunked(4096),
            (Some(FramingSpec::Chunked), Some(c)) if c.value > 0 => Framing::Chunked(c.value as usize),
            (Some(FramingSpec::Close), None) => Framing::Close,
            (_, Some(c)) => return cx.at(c, "chunk: expected a size above 0 with `framing: chunked`"),
        };
        let md5 = match &raw.md5 {
            None => Md5Header::None,
            Some(m) if m.value == "correct" => Md5Header::Correct,
            Some(m) => Md5Header::Value(m.value.clone()),
        };
        let bytes = Arc::new(img.bytes.clone());
        image = Some(img);
        let range = match raw.range {
            None | Some(RangeSpec::Honour) => RangeSupport::Honour,
            Some(RangeSpec::Ignore) => RangeSupport::Ignore,
            Some(RangeSpec::Unsatisfiable) => RangeSupport::Unsatisfiable,
        };
        Response::Image { bytes, framing, md5, range }
    } else if let Some(to) = &raw.redirect {
        let status = raw.status.as_ref().map_or(302, |s| s.value);
        if ![301, 302, 303, 307, 308].contains(&status) {
            let message = format!("redirect status {status}: expected 301, 302, 303, 307 or 308");
            return match &raw.status {
                Some(s) => cx.at(s, message),
                None => cx.at(to, message),
            };
        }
        https_placeholders(&to.value).or_else(|e| cx.at(to, e))?;
        Response::Redirect { status: status as u16, location: to.value.clone() }
    } else if raw.not_modified {
        Response::NotModified
    } else {
        let s = raw.status.as_ref().expect("one answer");
        if !(100..=599).contains(&s.value) || s.value == 304 {
            return cx.at(
                s,
                format!(
                    "status {}: expected an HTTP status from 100 to 599 (`not_modified: true` for 304)",
                    s.value
                ),
            );
        }
        Response::Status(s.value as u16)
    };
    let mut faults = Vec::new();
    if let Some(at) = raw.truncate_at {
        faults.push(Fault::Truncate { at: at as usize });
    }
    if let Some(at) = raw.reset_at {
        faults.push(Fault::Reset { at: at as usize });
    }
    if let Some(claimed) = raw.claim_length {
        faults.push(Fault::WrongLength { claimed });
    }
    if let Some(s) = &raw.stall {
        let for_ = parse_duration(&s.pause.value)
            .or_else(|e| cx.at(&s.pause, duration_message("stall for", &s.pause.value, e)))?;
        faults.push(Fault::Stall { at: s.after_bytes as usize, for_ });
    }
    if let Some(d) = &raw.drip {
        let every = parse_duration(&d.every.value)
            .or_else(|e| cx.at(&d.every, duration_message("drip every", &d.every.value, e)))?;
        if d.chunk == 0 {
            return cx.at(&d.every, "drip: chunk must be above 0");
        }
        faults.push(Fault::Drip { chunk: d.chunk as usize, every });
    }
    if faults.len() > 1 {
        return cx.at(&raw.path, "serve: at most one of truncate_at, reset_at, claim_length, stall, drip");
    }
    if raw.range.is_some() && image.is_none() {
        return cx.at(&raw.path, "serve: `range` says how an `image` is served; this path serves none");
    }
    if !faults.is_empty() && image.is_none() {
        return cx.at(&raw.path, "serve: body faults need an `image` to cut");
    }
    Ok(ServeStep {
        path: raw.path.value.clone(),
        image,
        route: Route { response, fault: faults.pop().unwrap_or_default() },
    })
}

/// `what` (a firmware-server step) needs a device that pulls from the run's server.
pub(super) fn needs_a_puller(
    what: &str,
    sections: &crate::paths::DeviceSections,
    cx: &Ctx<'_>,
    line: u64,
    column: u64,
) -> Result<(), ScenarioError> {
    if sections.pulls() {
        return Ok(());
    }
    cx.err(
        line,
        column,
        format!(
            "{what}: the device pulls from no server, so nothing would ask for it: add one of {} under `device`",
            crate::paths::pulling_sections()
        ),
    )
}

pub(super) fn publish(
    raw: RawPublish,
    sections: &crate::paths::DeviceSections,
    cx: &Ctx<'_>,
    line: u64,
    column: u64,
) -> Result<PublishStep, ScenarioError> {
    if !sections.needs_broker() {
        return cx.err(
            line,
            column,
            format!(
                "mqtt_publish: the device has no broker session: add one of {} under `device`",
                crate::paths::broker_sections()
            ),
        );
    }
    let topic = match (&raw.topic, sections.status_topics()) {
        (Some(t), _) => topic(cx, t, "topic")?,
        (None, Some((command, _))) => command.to_string(),
        (None, None) => {
            return cx.err(line, column, "mqtt_publish: missing `topic` (only the pull's `mqtt:` section gives a default, its command topic)");
        }
    };
    let cut_power = match &raw.cut_power {
        None => None,
        Some(c) => Some(super::check_cut(c, &raw.payload, cx)?),
    };
    https_placeholders(&raw.payload.value).or_else(|e| cx.at(&raw.payload, e))?;
    Ok(PublishStep { topic, payload: raw.payload.value, retain: raw.retain, cut_power })
}

pub(super) fn expect_status(
    raw: RawExpectStatus,
    sections: &crate::paths::DeviceSections,
    cx: &Ctx<'_>,
    line: u64,
    column: u64,
) -> Result<ExpectStatusStep, ScenarioError> {
    if sections.status_topics().is_none() {
        return cx.err(
            line,
            column,
            "expect_status: the device has no broker: add `mqtt: {}` under `device`",
        );
    }
    let Some(state) = State::by_name(&raw.state.value) else {
        let names: Vec<_> = State::ALL.iter().map(|s| s.name()).collect();
        return cx
            .at(&raw.state, format!("state `{}`: expected one of {}", raw.state.value, names.join(", ")));
    };
    let timeout = match &raw.timeout {
        None => Duration::from_secs(30),
        Some(t) => cx.duration("timeout", t)?,
    };
    let progress = match raw.progress {
        Some(p) if p.value > 100 => {
            return cx.at(&p, format!("progress {}: expected a percentage, 0 to 100", p.value));
        }
        p => p.map(|p| p.value),
    };
    Ok(ExpectStatusStep { state, err: raw.err, fw: raw.fw, progress, timeout })
}

pub(super) fn expect_request(
    raw: RawExpectRequest,
    cx: &Ctx<'_>,
) -> Result<ExpectRequestStep, ScenarioError> {
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, value) in raw.headers {
        headers.push((name, header_value(&value, cx)?));
    }
    Ok(ExpectRequestStep { path: raw.path, count: raw.count, headers, absent_headers: raw.absent_headers })
}

/// A header's expected value: as written, or a digest of a running image as the device reports
/// it: `{sha256:IMAGE}` is what `esp_partition_get_sha256` gives for the app (upper-case hex,
/// as arduino-esp32's updater sends it), `{md5:IMAGE}` the image's MD5 (`ESP.getSketchMD5()`).
fn header_value(value: &Spanned<String>, cx: &Ctx<'_>) -> Result<String, ScenarioError> {
    let text = value.value.as_str();
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return Ok(text.to_string());
    };
    let Some((kind, name)) = inner.split_once(':') else { return Ok(text.to_string()) };
    if kind != "sha256" && kind != "md5" {
        return cx.at(value, format!("`{text}`: expected `{{sha256:IMAGE}}` or `{{md5:IMAGE}}`"));
    }
    let image = cx.image(&Spanned { value: name.trim().to_string(), ..value.clone() })?;
    // Both digests cover the image as the device measures its running app: its verified length.
    let info = ota_core::image::verify(&mut image.bytes.as_slice(), ota_core::image::ChipInfo::ESP32C3)
        .or_else(|e| cx.at(value, format!("`{text}`: image `{name}` is not a valid app: {e}")))?;
    Ok(match kind {
        "md5" => {
            use md5::{Digest, Md5};
            let digest: [u8; 16] = Md5::digest(&image.bytes[..info.len as usize]).into();
            crate::inspect::hex(&digest)
        }
        _ => crate::inspect::hex(&info.partition_sha256).to_ascii_uppercase(),
    })
}
