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
    Ok(Arc::new(PageStep {
        declared_size,
        chunk_size,
        cancel_after: raw.cancel_after,
        disconnect_after: raw.disconnect_after,
        second_tab: raw.second_tab.unwrap_or(false),
        then,
    }))
}

impl PathUpdate for PageStep {
    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let endpoint = cx.endpoint(PORT)?;
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
