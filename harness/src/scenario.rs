//! Scenarios: the strict loader and the checks that turn what was written (`raw`) into what the
//! runner plays (`model`) — names and strings into images, paths, regexes and durations, every
//! error with file, line and column.

use crate::client::UpdatePath;
use crate::fixtures;
use crate::paths;
use ota_core::proto::arduino::AuthScheme;
use serde_saphyr::Spanned;
use std::path::Path;
use std::time::Duration;

mod model;
mod raw;
pub mod services;
pub mod yaml;

pub use model::*;
pub(crate) use raw::RawCut;
use raw::*;
pub use raw::{EraseSpec, FlashExpect, WriterFaultSpec};

pub use yaml::{
    Ctx, DurationError, Image, MAX_DURATION, Options, ScenarioError, duration_message, parse_duration,
};
pub(crate) use yaml::{read_text, yaml_error};

// ---- loading -------------------------------------------------------------------------------

/// Loads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = read_text(path)?;
    parse(&text, path)
}

/// Parses scenario text; `path` names it in errors and anchors relative file references.
pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column, message) = yaml_error(&e);
        ScenarioError { file: path.to_path_buf(), line, column, message }
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let cx = Ctx { file: path, dir };
    check(raw, &cx)
}

/// The most random multi-cut runs a sweep takes (each is a whole update).
pub const MAX_RANDOM_RUNS: u32 = 10_000;
/// The longest scenario name: it names files (`NAME-N-partitions.snap.new`, 23 bytes more), and
/// file systems take 255 bytes.
pub const MAX_NAME_LEN: usize = 100;

fn check(raw: RawScenario, cx: &Ctx<'_>) -> Result<Scenario, ScenarioError> {
    if raw.name.value.is_empty()
        || !raw.name.value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return cx.at(&raw.name, "name must be non-empty and use only letters, digits, `-` and `_`");
    }
    if raw.name.value.len() > MAX_NAME_LEN {
        return cx.at(
            &raw.name,
            format!(
                "name of {} bytes: at most {MAX_NAME_LEN} (it names the snapshot files)",
                raw.name.value.len()
            ),
        );
    }
    let RawDevice { firmware, rest: d } = raw.device;
    if let Some(key) = &d.unknown {
        return cx.at(key, RawDevice::unknown_key_message(&key.value));
    }
    let (partitions, partitions_name) = match &d.partitions {
        None => (
            ota_core::partition_csv::parse_csv(fixtures::DEFAULT_PARTITIONS_CSV)
                .expect("built-in table parses"),
            "esphome-4mb".to_string(),
        ),
        Some(p) => {
            let path = cx.dir.join(&p.value);
            let csv = match std::fs::read_to_string(&path) {
                Ok(c) => c,
                Err(e) => return cx.at(p, format!("cannot read partition table {}: {e}", path.display())),
            };
            match ota_core::partition_csv::parse_csv(&csv) {
                Ok(t) => (t, p.value.clone()),
                Err(e) => return cx.at(p, format!("partition table {}: {e}", path.display())),
            }
        }
    };
    let flash_size = match &d.flash_size {
        None => 4 << 20,
        Some(s) => match ota_core::partition_csv::parse_size(&s.value) {
            Some(n) if n.is_power_of_two() && (1 << 20..=16 << 20).contains(&n) => n,
            _ => return cx.at(s, format!("flash_size `{}`: expected 1M, 2M, 4M, 8M or 16M", s.value)),
        },
    };
    let protocol = match &d.protocol {
        None => 2,
        Some(p) if p.value == 1 || p.value == 2 => p.value,
        Some(p) => return cx.at(p, format!("protocol {}: expected 1 or 2", p.value)),
    };
    // The device keeps its password in NVS; what it cannot hold is a scenario error, not a
    // surprise at power-on.
    let password = match d.password {
        Some(p) if p.value.len() > ota_core::settings::MAX_PASSWORD_LEN => {
            return cx.at(
                &p,
                format!(
                    "password of {} bytes: the device stores at most {}",
                    p.value.len(),
                    ota_core::settings::MAX_PASSWORD_LEN
                ),
            );
        }
        Some(p) if p.value.contains('\0') => return cx.at(&p, "password: a NUL byte cannot be stored"),
        p => p.map(|p| p.value),
    };
    let arduino = match d.arduino {
        None => None,
        Some(a) => {
            let password = match a.password {
                Some(p) if p.value.len() > ota_core::settings::MAX_PASSWORD_LEN => {
                    return cx.at(
                        &p,
                        format!(
                            "arduino password of {} bytes: the device stores at most {}",
                            p.value.len(),
                            ota_core::settings::MAX_PASSWORD_LEN
                        ),
                    );
                }
                Some(p) if p.value.contains('\0') => {
                    return cx.at(&p, "arduino password: a NUL byte cannot be stored");
                }
                p => p.map(|p| p.value),
            };
            let auth = match a.auth {
                None | Some(ArduinoAuthSpec::Md5) => AuthScheme::Md5,
                Some(ArduinoAuthSpec::Pbkdf2) => AuthScheme::Pbkdf2Sha256,
            };
            Some(ArduinoDevice { password, auth })
        }
    };
    let device = Device {
        firmware: cx.image(&firmware)?,
        password,
        partitions,
        partitions_name,
        flash_size,
        protocol,
        bootloader_rollback: d.bootloader_rollback.unwrap_or(false),
        erase: d.erase.unwrap_or(EraseSpec::Sequential),
        seed: d.seed.unwrap_or(0),
        writer_fault: d.writer_fault,
        arduino,
        paths: {
            let mut sections = paths::DeviceSections::default();
            for (key, options) in d.sections {
                let entry =
                    paths::section_by_key(&key.value).expect("the raw device kept only registered keys");
                sections.insert(entry.key, (entry.read)(options, cx)?);
            }
            sections
        },
    };
    // What `run` would refuse when it builds the device's flash is refused here, at its place.
    if let Err(e) =
        ota_emu::mkflash::merged_image(&device.partitions, &device.firmware.bytes, device.flash_size)
    {
        use ota_emu::mkflash::MergeError;
        let at = match (&e, &d.flash_size, &d.partitions) {
            (MergeError::AppTooBig { .. }, ..) => &firmware,
            (MergeError::PastEnd { .. } | MergeError::FlashSize(_), Some(size), _) => size,
            (_, _, Some(table)) => table,
            _ => &firmware,
        };
        return cx.at(at, format!("the device's flash cannot be built: {e}"));
    }
    let mut steps = Vec::new();
    // Where the scenario switched the power off, until it switches it on again.
    let mut powered_off_at: Option<u64> = None;
    for s in raw.steps {
        let line = s.referenced.line();
        let column = s.referenced.column();
        let kind = match s.value {
            RawStep::Boot => {
                powered_off_at = None;
                StepKind::Boot
            }
            RawStep::PowerOn => {
                powered_off_at = None;
                StepKind::PowerOn
            }
            RawStep::PowerOff => {
                powered_off_at = Some(line);
                StepKind::PowerOff
            }
            RawStep::Reset => {
                if let Some(off) = powered_off_at {
                    // A reset button does nothing to a chip without power.
                    return cx.err(
                        line,
                        column,
                        format!(
                            "reset: the device is powered off here (power_off at line {off}): power_on first"
                        ),
                    );
                }
                StepKind::Reset
            }
            RawStep::ExpectLog(e) => {
                let (pattern, timeout, absent) = match e {
                    RawExpectLog::Pattern(p) => (p, None, false),
                    RawExpectLog::Full(f) => (f.pattern, f.timeout, f.absent),
                };
                let regex = match regex::Regex::new(&pattern) {
                    Ok(r) => r,
                    Err(e) => return cx.err(line, column, format!("expect_log pattern is not a regex: {e}")),
                };
                let timeout = match timeout {
                    None => Duration::from_secs(5),
                    Some(yaml::DurationText(t)) => match parse_duration(&t) {
                        Ok(d) => d,
                        Err(e) => return cx.err(line, column, duration_message("timeout", &t, e)),
                    },
                };
                StepKind::ExpectLog { pattern: regex, timeout, absent }
            }
            RawStep::Snapshot(k) => {
                let names = match k {
                    RawSnapshot::One(n) => vec![n],
                    RawSnapshot::Many(v) => v,
                };
                if names.is_empty() {
                    return cx.err(
                        line,
                        column,
                        "snapshot: expected `partitions`, `log` or both, not nothing",
                    );
                }
                let mut kinds = Vec::new();
                for n in names {
                    let kind = match n.as_str() {
                        "partitions" => SnapshotKind::Partitions,
                        "log" => SnapshotKind::Log,
                        other => {
                            return cx.err(
                                line,
                                column,
                                format!("snapshot `{other}`: expected `partitions` or `log`"),
                            );
                        }
                    };
                    if kinds.contains(&kind) {
                        return cx.err(line, column, format!("snapshot: `{n}` is named twice"));
                    }
                    kinds.push(kind);
                }
                StepKind::Snapshot(kinds)
            }
            RawStep::Ota(o) => StepKind::Ota(Box::new(check_ota(o.at(line, column), &device, cx)?)),
            RawStep::Sweep(w) => StepKind::Sweep(Box::new(SweepStep {
                random_runs: match w.random_runs {
                    n if n > MAX_RANDOM_RUNS => {
                        return cx.err(
                            line,
                            column,
                            format!(
                                "sweep: random_runs {n}: at most {MAX_RANDOM_RUNS} (each is a whole update)"
                            ),
                        );
                    }
                    n => n,
                },
                max_cuts: match (w.max_cuts, w.random_runs) {
                    (Some(0), _) => {
                        return cx.err(line, column, "sweep: max_cuts 0: a random run cuts at least once");
                    }
                    (Some(_), 0) => {
                        return cx.err(
                            line,
                            column,
                            "sweep: max_cuts bounds the random runs' cuts: give random_runs too",
                        );
                    }
                    (m, _) => m.unwrap_or(4),
                },
                path: sweep_path(w.via.as_ref().or(w.protocol.as_ref()), cx)?,
                image: cx.image(&w.image)?,
                torn: w.torn,
                exact: w.exact,
            })),
            RawStep::Serve(r) => {
                services::needs_a_puller("serve", &device.paths, cx, line, column)?;
                StepKind::Serve(Box::new(services::serve(*r, cx)?))
            }
            RawStep::MqttPublish(r) => {
                StepKind::MqttPublish(services::publish(r, &device.paths, cx, line, column)?)
            }
            RawStep::ExpectStatus(r) => {
                StepKind::ExpectStatus(services::expect_status(r, &device.paths, cx, line, column)?)
            }
            RawStep::ExpectRequest(r) => {
                services::needs_a_puller("expect_request", &device.paths, cx, line, column)?;
                StepKind::ExpectRequest(services::expect_request(r, cx)?)
            }
            RawStep::Broker(a) => {
                if !device.paths.needs_broker() {
                    return cx.err(
                        line,
                        column,
                        format!(
                            "broker: the device has no broker session: add one of {} under `device`",
                            paths::broker_sections()
                        ),
                    );
                }
                StepKind::Broker(a)
            }
        };
        steps.push(Step { line, kind });
    }
    Ok(Scenario { name: raw.name.value, about: raw.about, file: cx.file.to_path_buf(), device, steps })
}

/// A `cut_power` option; errors point at `at` (the step's anchor field).
fn check_cut<U>(c: &RawCut, at: &Spanned<U>, cx: &Ctx<'_>) -> Result<(CutPower, Option<u64>), ScenarioError> {
    let cut = match (c.after_bytes, c.after_ops, &c.at_log) {
        (Some(b), None, None) => CutPower::AfterBytes(b),
        (None, Some(n), None) => CutPower::AfterOps(n),
        (None, None, Some(pattern)) => {
            if c.torn_seed.is_some() {
                return cx.at(
                    at,
                    "cut_power: `torn_seed` tears a flash operation cut at an exact point; `at_log` cuts between operations",
                );
            }
            if pattern.contains('\n') {
                return cx.at(at, "cut_power at_log: one line of regex, without a newline");
            }
            match regex::Regex::new(pattern) {
                Ok(re) => CutPower::AtLog(re),
                Err(e) => return cx.at(at, format!("cut_power at_log is not a regex: {e}")),
            }
        }
        _ => return cx.at(at, "cut_power: expected exactly one of `after_bytes`, `after_ops` or `at_log`"),
    };
    Ok((cut, c.torn_seed))
}

/// A step's `via` (or `protocol`): the registered path it names, the first when it names none.
fn path_named(
    name: Option<&Spanned<String>>,
    cx: &Ctx<'_>,
) -> Result<&'static paths::PathEntry, ScenarioError> {
    match name {
        None => Ok(&paths::PATHS[0]),
        Some(p) => match paths::by_name(&p.value) {
            Some(entry) => Ok(entry),
            None => cx.at(p, format!("update path `{}`: expected one of {}", p.value, paths::names())),
        },
    }
}

/// A sweep's path: one whose update the emulator's sweep can cut.
fn sweep_path(name: Option<&Spanned<String>>, cx: &Ctx<'_>) -> Result<UpdatePath, ScenarioError> {
    let entry = path_named(name, cx)?;
    match (entry.sweep, name) {
        (Some(core), _) => Ok(core),
        (None, Some(at)) => cx.at(
            at,
            format!(
                "sweep over {}: the emulator's power-cut sweep does not drive this path (it does: {})",
                entry.name,
                paths::PATHS
                    .iter()
                    .filter(|p| p.sweep.is_some())
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (None, None) => unreachable!("the default path is sweepable (a registry test checks)"),
    }
}

/// An `ota:` step: its own keys here, the rest read by its path.
fn check_ota(mut o: Options, device: &Device, cx: &Ctx<'_>) -> Result<OtaStep, ScenarioError> {
    let (line, column) = (o.line, o.column);
    let via = o.take::<String>("via", cx)?;
    let protocol = o.take::<String>("protocol", cx)?;
    if let (Some(_), Some(p)) = (&via, &protocol) {
        return cx.at(p, "`via` and `protocol` name the same thing: keep one");
    }
    let path = path_named(via.as_ref().or(protocol.as_ref()), cx)?;
    let Some(image) = o.take::<String>("image", cx)? else {
        return cx.err(line, column, "ota: missing `image` (a fixture name or a file)");
    };
    let Some(expect_text) = o.take::<String>("expect", cx)? else {
        return cx.err(line, column, "ota: missing `expect` (ok, interrupted, or an outcome of the path)");
    };
    let errors = (path.outcomes)();
    let expect = match expect_text.value.as_str() {
        "ok" => Expect::OK,
        "interrupted" => Expect::INTERRUPTED,
        "password_required" => Expect::PASSWORD_REQUIRED,
        name => match errors.iter().find(|n| **n == name) {
            Some(n) => Expect(n),
            None => {
                return cx.at(
                    &expect_text,
                    format!(
                        "expect `{name}`: expected ok, interrupted, password_required or an outcome of {} OTA ({})",
                        path.name,
                        errors.join(", ")
                    ),
                );
            }
        },
    };
    let timeout = match o.take::<yaml::DurationText>("timeout", cx)? {
        Some(t) => cx.duration("timeout", &t)?,
        None => Duration::from_secs(20),
    };
    let cut_power = match o.take::<RawCut>("cut_power", cx)? {
        None => None,
        Some(c) => Some(check_cut(&c.value, &c, cx)?),
    };
    let flash = o.take::<FlashExpect>("flash", cx)?;
    let erases = o.take::<u64>("erases", cx)?.map(|e| e.value);
    let update = (path.read)(o, &paths::ReadCx { cx, sections: &device.paths, line, column })?;
    Ok(OtaStep {
        path,
        image: cx.image(&image)?,
        expect,
        timeout,
        cut_power,
        flash_unchanged: flash.is_some_and(|f| f.value == FlashExpect::Unchanged),
        erases,
        update,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn err(text: &str) -> ScenarioError {
        parse(text, Path::new("scenarios/x.yaml")).unwrap_err()
    }

    const OK: &str =
        "name: t\ndevice: { firmware: v1 }\nsteps:\n  - boot\n  - ota: { image: v2, expect: ok }\n";

    #[test]
    fn loads_a_scenario() {
        let s = parse(OK, Path::new("x.yaml")).unwrap();
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[1].line, 5);
        assert!(matches!(&s.steps[1].kind, StepKind::Ota(o) if o.expect == Expect::OK));
    }

    #[test]
    fn service_steps_take_any_device_with_a_broker_session() {
        let homie = "name: t\ndevice: { firmware: v1, homie: { ota: true } }\nsteps:\n  - boot\n";
        let s = parse(
            &format!("{homie}  - mqtt_publish: {{ topic: homie/otahil/$implementation/reset, payload: 'true' }}\n  - broker: go_away\n  - broker: come_back\n"),
            Path::new("x.yaml"),
        )
        .unwrap();
        assert!(
            matches!(&s.steps[1].kind, StepKind::MqttPublish(p) if p.topic == "homie/otahil/$implementation/reset")
        );
        let e = err(&format!("{homie}  - mqtt_publish: {{ payload: x }}\n"));
        assert_eq!((e.line, e.message.contains("missing `topic`")), (5, true), "{e}");
        let e = err(&format!("{homie}  - expect_status: {{ state: done }}\n"));
        assert_eq!(e.line, 5, "the pull's status needs the pull's section: {e}");
        let bare = "name: t\ndevice: { firmware: v1 }\nsteps:\n  - boot\n";
        let e = err(&format!("{bare}  - broker: go_away\n"));
        assert!(e.message.contains("no broker session"), "{e}");
        let e = err(&format!("{bare}  - mqtt_publish: {{ topic: a, payload: x }}\n"));
        assert!(e.message.contains("no broker session"), "{e}");
    }

    #[test]
    fn https_placeholders_and_the_devices_tls_are_checked_where_written() {
        let device = "name: t\ndevice: { firmware: v1, mqtt: { tls: { clock: true } } }\nsteps:\n  - boot\n";
        let ok =
            format!("{device}  - mqtt_publish: {{ payload: '{{\"url\":\"{{https_expired}}/a.bin\"}}' }}\n");
        let s = parse(&ok, Path::new("x.yaml")).unwrap();
        assert_eq!(s.device.paths.test_ca(), Some(true));
        let e = err(&format!(
            "{device}  - mqtt_publish: {{ payload: '{{\"url\":\"{{https_bogus}}/a.bin\"}}' }}\n"
        ));
        assert_eq!(e.line, 5, "{e}");
        assert!(
            e.message.contains("placeholder `{https_bogus}`") && e.message.contains("{https_tls12}"),
            "{e}"
        );
        let e = err(&format!("{device}  - serve: {{ path: /r, redirect: '{{https_nope}}/x' }}\n"));
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("placeholder `{https_nope}`"), "{e}");
        let e = err("name: t\ndevice: { firmware: v1, mqtt: { tls: { clock: maybe } } }\nsteps: []\n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, colour: red }\n",
        );
        assert_eq!((e.line, e.file.as_path()), (4, Path::new("scenarios/x.yaml")));
        assert!(e.column > 0);
        assert!(e.message.contains("colour"), "{e}");
    }

    /// Each path reads its own options: one of another path's is an error at its key, naming
    /// the path and what it has.
    #[test]
    fn a_paths_options_are_its_own_and_errors_point_at_the_key() {
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok,\n      invitation: x }\n",
        );
        assert_eq!((e.line, e.column), (5, 19), "{e}");
        assert!(e.message.contains("`invitation` is not an option of esphome OTA steps"), "{e}");
        assert!(e.message.contains("auth") && e.message.contains("send_delay"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { via: arduino, image: v2, expect: ok, auth: md5 }\n",
        );
        assert!(e.message.contains("`auth` is not an option of arduino OTA steps"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { via: carrier-pigeon, image: v2, expect: ok }\n",
        );
        assert!(
            e.message
                .contains("update path `carrier-pigeon`: expected one of esphome, arduino, homie, homie1"),
            "{e}"
        );
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { via: arduino, protocol: arduino, image: v2, expect: ok }\n",
        );
        assert!(e.message.contains("keep one"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { via: homie, image: v2, expect: ok }\n",
        );
        assert!(e.message.contains("add `homie: { ota: true }` under `device`"), "{e}");
        assert_eq!(e.line, 4, "{e}");
        let homie = "name: t\ndevice: { firmware: v1, homie: { ota: true } }\nsteps:\n";
        let e = err(&format!("{homie}  - ota: {{ via: homie, image: v2, expect: ok, encoding: hex }}\n"));
        assert!(e.message.starts_with("encoding:") && e.line == 4, "{e}");
        let e = err(&format!("{homie}  - ota: {{ via: homie, image: v2, expect: ok, truncate: lots }}\n"));
        assert!(e.message.contains("truncate: expected a whole number"), "{e}");
        let e = err(&format!("{homie}  - ota: {{ via: homie, image: v2, expect: bad_size }}\n"));
        assert!(
            e.message.contains("an outcome of homie OTA (not_modified, ota_disabled, bad_checksum"),
            "{e}"
        );
        let e = err("name: t\ndevice: { firmware: v1, homie: { id: Not_An_Id } }\nsteps: []\n");
        assert!(e.message.contains("homie id `Not_An_Id`"), "{e}");
        // A path's section is read by its path, every error at its key's line.
        let e = err("name: t\ndevice:\n  firmware: v1\n  homie1:\n    ota: true\n    id: Bad!\nsteps: []\n");
        assert_eq!((e.line, e.message.starts_with("homie id `Bad!`")), (6, true), "{e}");
        let e = err("name: t\ndevice:\n  firmware: v1\n  mqtt:\n    resume: true\n    qos: 2\nsteps: []\n");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("`qos` is not an option of device `mqtt` (it has: "), "{e}");
        let e = err("name: t\ndevice:\n  firmware: v1\n  mqtt: { timeout: 1.5s }\nsteps: []\n");
        assert!(e.message.contains("timeout `1.5s`: expected whole seconds"), "{e}");
        let e = err("name: t\ndevice:\n  firmware: v1\n  homie2: {}\nsteps: []\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("unknown field `homie2`, expected one of `firmware`"), "{e}");
        assert!(e.message.contains("`homie`, `homie1`, `mqtt`"), "the paths' sections are named: {e}");
        let e = err("name: t\ndevice:\n  firmware: v1\n  seed: 1\n  seed: 2\nsteps: []\n");
        assert!(e.message.contains("appears twice"), "{e}");
        let e = err("name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { expect: ok }\n");
        assert!(e.message.contains("missing `image`"), "{e}");
        let s = parse(
            &format!("{homie}  - ota: {{ via: homie, image: v2, expect: ok, encoding: base64 }}\n"),
            Path::new("x.yaml"),
        )
        .unwrap();
        assert!(matches!(&s.steps[0].kind, StepKind::Ota(o) if o.path.name == "homie"));
        assert_eq!(
            s.device.paths.get::<paths::homie::DeviceSection>("homie").map(|h| (h.id.as_str(), h.ota)),
            Some(("otahil", true))
        );
    }

    #[test]
    fn wrong_type_and_missing_image() {
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, declared_size: lots }\n",
        );
        assert_eq!(e.line, 4, "{e}");
        let e =
            err("name: t\ndevice: { firmware: v1 }\nsteps:\n  - boot\n  - ota: { image: v7, expect: ok }\n");
        assert_eq!((e.line, e.column), (5, 19), "{e}");
        assert!(e.message.contains("unknown image `v7`") && e.message.contains("v1, v2"), "{e}");
        let e = err("name: t\ndevice: { firmware: nope.bin }\nsteps: []\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn bad_values_are_explained() {
        let e = err("name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: sorta }\n");
        assert!(e.message.contains("expect `sorta`") && e.message.contains("auth_invalid"), "{e}");
        let e = err("name: t\ndevice: { firmware: v1 }\nsteps:\n  - explode\n");
        assert_eq!(e.line, 4, "{e}");
        let e =
            err("name: t\ndevice: { firmware: v1 }\nsteps:\n  - expect_log: { pattern: '(', timeout: 1s }\n");
        assert!(e.message.contains("not a regex"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - expect_log: { pattern: 'x', timeout: soon }\n",
        );
        assert!(e.message.contains("timeout `soon`"), "{e}");
        let e = err("name: bad name\ndevice: { firmware: v1 }\nsteps: []\n");
        assert_eq!(e.line, 1);
        let e = err("name: t\nsteps: []\n");
        assert!(e.message.contains("device"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, cut_power: { after_ops: 1, after_bytes: 2 } }\n",
        );
        assert!(e.message.contains("exactly one"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, cut_power: { at_log: 'progress (' } }\n",
        );
        assert!(e.message.contains("at_log is not a regex"), "{e}");
        assert_eq!(e.line, 4, "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, cut_power: { at_log: x, torn_seed: 1 } }\n",
        );
        assert!(e.message.contains("`at_log` cuts between operations"), "{e}");
        let e = err("name: t\ndevice: { firmware: v1, flash_size: 3M }\nsteps: []\n");
        assert!(e.message.contains("flash_size"), "{e}");
        let e = err("name: t\ndevice: [1, 2\n");
        assert!(e.line > 0, "{e}");
    }

    /// Issue #11 defects 1 and 2: a huge duration is a load error at its place, not a panic.
    #[test]
    fn a_huge_duration_is_an_error_at_its_line() {
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, timeout: 18446744073709551616s }\n",
        );
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("longer than the 24 h"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - boot\n  - expect_log: { pattern: x, timeout: 10000000000000000000s }\n",
        );
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("timeout `10000000000000000000s`: longer than"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, send_delay: 20000000000000000000000000ms }\n",
        );
        assert!(e.message.contains("longer than"), "{e}");
        let e = err(
            "name: t\ndevice: { firmware: v1 }\nsteps:\n  - ota: { protocol: arduino, image: v2, expect: ok, stall: { after_bytes: 1, for: 400000000000000000m } }\n",
        );
        assert!(e.message.contains("stall for") && e.message.contains("longer than"), "{e}");
    }

    /// Issue #11: messages say what was expected, not the YAML library's internals.
    #[test]
    fn library_internals_stay_out_of_the_messages() {
        let cases = [
            ("name: t\nname: u\ndevice: { firmware: v1 }\nsteps: []\n", "key `name` appears twice"),
            (
                "name: t\ndevice: { firmware: v1 }\nsteps:\n  - expect_log: { patern: x }\n",
                "expect_log: expected a regex",
            ),
            (
                "name: t\ndevice: { firmware: v1 }\nsteps:\n  - snapshot: { a: 1 }\n",
                "snapshot: expected `partitions`",
            ),
            (
                "name: t\ndevice: { firmware: v1, seed: -1 }\nsteps: []\n",
                "expected a whole number from 0 to 18446744073709551615",
            ),
            ("name: t\ndevice: { firmware: v1 }\nsteps: [ [boot] ]\n", "a step: expected a step name"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.message.contains(want), "{e}");
            for internal in [
                "DuplicateKeyPolicy",
                "untagged enum",
                "Raw",
                "invalid u64",
                "externally tagged",
                "budget breached",
            ] {
                assert!(!e.message.contains(internal), "{e}");
            }
        }
    }

    /// What `run` would refuse, `check` refuses: a table past the end of the flash, an app
    /// that does not fit its slot.
    #[test]
    fn a_device_that_cannot_be_built_is_an_error_at_its_line() {
        let e = err("name: t\ndevice: { firmware: v1, flash_size: 2M }\nsteps: []\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("past the 0x200000-byte flash"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tiny.csv"),
            "otadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x10000\n",
        )
        .unwrap();
        let e = parse(
            "name: t\ndevice:\n  firmware: v1\n  partitions: tiny.csv\nsteps: []\n",
            &dir.path().join("x.yaml"),
        )
        .unwrap_err();
        assert_eq!(e.line, 3, "the firmware's line: {e}");
        assert!(e.message.contains("does not fit partition app0"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration("-1s"), Err(DurationError::NotADuration));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("1d"), Err(DurationError::NotADuration));
        assert_eq!(parse_duration("1440m"), Ok(MAX_DURATION));
        // Issue #11 defects 1 and 2: these panicked in `check` or in `run`.
        for huge in [
            "18446744073709551616s",
            "400000000000000000m",
            "20000000000000000000000000ms",
            "10000000000000000000s",
            "86401s",
        ] {
            assert_eq!(parse_duration(huge), Err(DurationError::TooLong), "{huge}");
        }
    }

    /// Issue #22's loader defects: each was accepted and failed, did nothing or ran unbounded
    /// at run time.
    #[test]
    fn what_cannot_run_as_written_is_refused_at_its_line() {
        let device = "name: t\ndevice: { firmware: v1 }\nsteps:\n";
        let e = err(&format!("{device}  - boot\n  - snapshot: [log, log]\n"));
        assert_eq!((e.line, e.message.as_str()), (5, "snapshot: `log` is named twice"));
        let e = err(&format!("{device}  - snapshot: []\n"));
        assert!(e.message.contains("not nothing"), "{e}");
        let e = err(&format!("{device}  - sweep: {{ image: v2, random_runs: 4294967295 }}\n"));
        assert!(e.message.contains("random_runs 4294967295: at most 10000"), "{e}");
        let e = err(&format!("{device}  - sweep: {{ image: v2, max_cuts: 3 }}\n"));
        assert!(e.message.contains("give random_runs too"), "{e}");
        let e = err(&format!("{device}  - sweep: {{ image: v2, random_runs: 2, max_cuts: 0 }}\n"));
        assert!(e.message.contains("max_cuts 0"), "{e}");
        let ok = parse(
            &format!("{device}  - sweep: {{ image: v2, random_runs: 2, max_cuts: 2 }}\n"),
            Path::new("x.yaml"),
        );
        assert!(ok.is_ok(), "{ok:?}");
        for step in ["serve: { path: /x.bin, image: v2 }", "expect_request: { path: /x.bin }"] {
            let e = err(&format!("{device}  - {step}\n"));
            assert_eq!(e.line, 4, "{e}");
            assert!(
                e.message.contains("pulls from no server") && e.message.contains("`homie1: {}`, `mqtt: {}`"),
                "{e}"
            );
            let pulls = "name: t\ndevice: { firmware: v1, mqtt: {} }\nsteps:\n";
            assert!(parse(&format!("{pulls}  - {step}\n"), Path::new("x.yaml")).is_ok(), "{step}");
        }
        let e = err(&format!("{device}  - boot\n  - power_off\n  - reset\n"));
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("powered off here (power_off at line 5): power_on first"), "{e}");
        let on = parse(
            &format!("{device}  - boot\n  - power_off\n  - power_on\n  - reset\n"),
            Path::new("x.yaml"),
        );
        assert!(on.is_ok(), "{on:?}");
        // Header digests of a named image, as the device reports its running app.
        let pulls = "name: t\ndevice: { firmware: v1, mqtt: {} }\nsteps:\n";
        let request =
            |value: &str| format!("{pulls}  - expect_request: {{ path: /x, headers: {{ h: '{value}' }} }}\n");
        let s = parse(&request("{sha256:v1}"), Path::new("x.yaml")).unwrap();
        let StepKind::ExpectRequest(r) = &s.steps[0].kind else { panic!("{:?}", s.steps[0].kind) };
        let v1 = crate::fixtures::find("v1").unwrap().bytes();
        let info = ota_core::image::verify(&mut v1.as_slice(), ota_core::image::ChipInfo::ESP32C3).unwrap();
        assert_eq!(
            r.headers[0].1,
            info.partition_sha256.iter().map(|b| format!("{b:02X}")).collect::<String>()
        );
        assert_eq!(
            &info.partition_sha256[..],
            &v1[info.len as usize - 32..info.len as usize],
            "the appended hash"
        );
        let e = err(&format!("{pulls}  - expect_status: {{ state: done, progress: 101 }}\n"));
        assert!(e.message.contains("progress 101: expected a percentage, 0 to 100"), "{e}");
        let e = err(&request("{sha1:v1}"));
        assert!(e.message.contains("expected `{sha256:IMAGE}` or `{md5:IMAGE}`"), "{e}");
        let e = err(&request("{md5:nope}"));
        assert!(e.message.contains("unknown image `nope`"), "{e}");
        let long = "n".repeat(MAX_NAME_LEN + 1);
        let e = err(&format!("name: {long}\ndevice: {{ firmware: v1 }}\nsteps: []\n"));
        assert_eq!((e.line, e.message.contains("at most 100")), (1, true), "{e}");
        assert!(
            parse(
                &format!("name: {}\ndevice: {{ firmware: v1 }}\nsteps: []\n", &long[1..]),
                Path::new("x.yaml")
            )
            .is_ok()
        );
    }

    /// Issue #22's messages: a bare number names the unit it lacks (it said "expected a
    /// string" or matched no form of the step), and hours are a unit as the 24 h bound is.
    #[test]
    fn a_duration_without_its_unit_says_which_units_there_are() {
        let device = "name: t\ndevice: { firmware: v1 }\nsteps:\n";
        for step in [
            "ota: { image: v2, expect: ok, timeout: 5 }",
            "expect_log: { pattern: x, timeout: 5 }",
            "ota: { image: v2, expect: ok, send_delay: 5 }",
        ] {
            let e = err(&format!("{device}  - {step}\n"));
            assert!(
                e.message.contains("`5`: a duration needs its unit: `5s`, `5ms`, `5m` or `5h`"),
                "{step}: {e}"
            );
        }
        let e = err("name: t\ndevice:\n  firmware: v1\n  mqtt: { timeout: 2.5 }\nsteps: []\n");
        assert!(e.message.contains("timeout `2.5`: a duration needs its unit"), "{e}");
        let ok =
            parse(&format!("{device}  - expect_log: {{ pattern: x, timeout: 2h }}\n"), Path::new("x.yaml"));
        assert!(
            matches!(&ok.unwrap().steps[0].kind, StepKind::ExpectLog { timeout, .. } if timeout.as_secs() == 7200)
        );
        let e = err(&format!("{device}  - expect_log: {{ pattern: x, timeout: 25h }}\n"));
        assert!(e.message.contains("longer than the 24 h"), "{e}");
    }

    /// A report's step labels say what is served and which fault, in the scenario's words.
    #[test]
    fn step_labels_name_the_fault_served_without_rust_syntax() {
        let text = "name: t\ndevice: { firmware: v1, mqtt: {} }\nsteps:\n\
            \x20 - serve: { path: /a.bin, image: v2, truncate_at: 9000 }\n\
            \x20 - serve: { path: /b.bin, image: v2, framing: chunked, md5: correct, stall: { after_bytes: 10, for: 40s } }\n\
            \x20 - serve: { path: /c.bin, status: 404 }\n\
            \x20 - serve: { path: /d.bin, redirect: /a.bin, status: 301 }\n\
            \x20 - serve: { path: /e.bin, not_modified: true }\n\
            \x20 - broker: go_away\n\
            \x20 - expect_status: { state: done, progress: 100 }\n";
        let s = parse(text, Path::new("x.yaml")).unwrap();
        let labels: Vec<String> = s.steps.iter().map(|s| s.kind.label()).collect();
        assert_eq!(
            labels,
            [
                "serve /a.bin: v2 (truncated at byte 9000)",
                "serve /b.bin: v2, chunked by 4096, x-MD5 (stalls 40s at byte 10)",
                "serve /c.bin: status 404",
                "serve /d.bin: redirect 301 to /a.bin",
                "serve /e.bin: 304 not modified",
                "broker go_away",
                "expect_status done at 100%",
            ]
        );
    }
}
