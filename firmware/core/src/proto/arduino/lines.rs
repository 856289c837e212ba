//! ArduinoOTA's log lines (tag `arduino`; its settings line tag `config`). Its writes share the
//! writer's `ota` lines in [`crate::log`].

use super::{AuthScheme, InvitationError, UpdateError};
use crate::log::{Level, ModuleLine};
use crate::settings::Source;
use crate::writer::OtaError;
use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArduinoLine {
    InvitationIgnored(InvitationError),
    Busy,
    AuthUnexpected {
        got: u32,
    },
    AuthMalformed(InvitationError),
    AuthFailed,
    BeginFailed {
        error: UpdateError,
        cause: Option<OtaError>,
    },
    ConnectFailed,
    WriteFailed {
        error: UpdateError,
        cause: OtaError,
    },
    ReceiveFailed {
        received: u32,
        size: u32,
    },
    UpdateFailed {
        error: UpdateError,
        cause: Option<OtaError>,
    },
    /// The settings ArduinoOTA runs with (tag `config`).
    Config {
        port: u16,
        password: bool,
        password_from: Source,
        auth: AuthScheme,
        auth_from: Source,
    },
}

impl ModuleLine for ArduinoLine {
    fn level(&self) -> Level {
        use ArduinoLine::*;
        match self {
            BeginFailed { .. }
            | ConnectFailed
            | WriteFailed { .. }
            | ReceiveFailed { .. }
            | UpdateFailed { .. } => Level::Error,
            InvitationIgnored(_) | Busy | AuthUnexpected { .. } | AuthMalformed(_) | AuthFailed => {
                Level::Warn
            }
            Config { .. } => Level::Info,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            ArduinoLine::Config { .. } => "config",
            _ => "arduino",
        }
    }
}

impl fmt::Display for ArduinoLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ArduinoLine::*;
        match self {
            InvitationIgnored(why) => write!(f, "invitation ignored: {why}"),
            Busy => f.write_str("invitation ignored: an update is already running"),
            AuthUnexpected { got } => write!(f, "200 was expected. got {got} instead"),
            AuthMalformed(why) => write!(f, "authentication answer ignored: {why}"),
            AuthFailed => f.write_str("Authentication Failed"),
            BeginFailed { error, cause } => {
                write!(f, "Begin ERROR: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            ConnectFailed => f.write_str("could not connect back to the uploader: update dropped"),
            WriteFailed { error, cause } => write!(f, "Write ERROR: {error} ({cause})"),
            ReceiveFailed { received, size } => write!(f, "Receive Failed after {received} of {size} bytes"),
            UpdateFailed { error, cause } => {
                write!(f, "Update ERROR: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            Config { port, password, password_from, auth, auth_from } => write!(
                f,
                "ArduinoOTA on UDP port {port}: password {} ({password_from}), auth {auth} ({auth_from})",
                if *password { "set" } else { "none" }
            ),
        }
    }
}
