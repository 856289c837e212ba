//! The WebSocket OTA page's settings: NVS `web_form` = 3 serves it on port 80 (the page sets
//! share the one web listener), and the device's `confirm` ([`crate::boot::KEY_CONFIRM`]) says
//! whether a new image waits for the page's answer. No credentials: the component has none.

use crate::boot::Confirm;
use crate::proto::web_form::settings::{KEY_WEB_FORM, Pages};
use crate::provision::{PathProvision, ProvisionError, SettingsPage};

/// What a factory (or the harness) provisions for the page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Provision {
    pub confirm: Confirm,
}

impl PathProvision for Provision {
    fn write(&self, page: &mut SettingsPage) -> Result<(), ProvisionError> {
        page.u8(KEY_WEB_FORM, Pages::WsOta as u8)?;
        self.confirm.write(page)
    }
}
