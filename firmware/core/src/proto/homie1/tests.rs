use super::*;

#[test]
fn an_offer_is_read_as_homie_1_5_reads_it() {
    assert_eq!(offer(b"1.0.0", "1.0.0"), Offer::Same);
    assert_eq!(offer(b"2.0.0", "1.0.0"), Offer::Update(Version::new("2.0.0").unwrap()));
    assert_eq!(offer(b"v1.0.0-alpha+001", "1.0.0"), Offer::Update(Version::new("v1.0.0-alpha+001").unwrap()));
    assert_eq!(offer(b"v1.0.0-alpha+0012", "1.0.0"), Offer::TooLong, "17 characters");
    assert_eq!(offer(b"", "1.0.0"), Offer::TooLong, "no version is no offer");
    assert_eq!(offer(&[0xFF, 0xFE], "1.0.0"), Offer::TooLong);
}

#[test]
fn the_version_header_is_id_name_have_want() {
    let mut buf = [0u8; 96];
    assert_eq!(
        version_header(&mut buf, "c631f278", "awesome-light", "1.0.0", "1.1.0"),
        "c631f278=awesome-light=1.0.0=1.1.0"
    );
}

/// A harness that only reads the serial log knows the device restarts by itself from these.
#[test]
fn its_restarts_are_announced_as_every_restart_is() {
    use crate::log::{LogEvent, LogLine, Milestone};
    for line in [Homie1Line::RebootingIntoOta, Homie1Line::RebootingIntoNormal] {
        let text = std::format!("{}", LogLine { ms: 7, event: &LogEvent::Module(&line) });
        assert_eq!(Milestone::of(&text), Some(Milestone::RebootIntoUpdate), "{text}");
    }
}

/// Homie 3 and Homie 1.x share the id and the OTA switch: provisioned together, the page holds
/// one of each (the first path's), and both read them back.
#[test]
fn both_generations_provisioned_share_one_id_and_switch() {
    use crate::provision::{ProvisionError, SettingProblem, provisioning_page};
    use crate::testutil::{BASE_SETTINGS, provisioned_flash};
    let three = crate::proto::homie::settings::Provision { broker: "10.0.2.2", id: Some("dev-3"), ota: true };
    let one = settings::Provision {
        broker: "10.0.2.2:1884",
        id: Some("dev-1"),
        ota: false,
        url: Some("http://10.0.2.2:8080/ota"),
    };
    let page = provisioning_page(&BASE_SETTINGS, &[&three, &one]).unwrap();
    let (mut flash, table) = provisioned_flash(Some(&page));
    let mut lines = std::vec::Vec::new();
    let s =
        settings::Homie1Settings::load(&mut flash, &table, [0; 6], &mut |e: &crate::log::LogEvent<'_>| {
            lines.push(std::format!("{e}"))
        });
    assert!(lines.is_empty(), "no key written twice or refused: {lines:?}");
    assert_eq!((s.id.as_str(), s.ota_enabled, s.url()), ("dev-3", true, "http://10.0.2.2:8080/ota"));
    assert_eq!(s.broker, Some("10.0.2.2:1884".parse().unwrap()));
    // Alone, Homie 1.x writes its own.
    let page = provisioning_page(&BASE_SETTINGS, &[&one]).unwrap();
    let (mut flash, table) = provisioned_flash(Some(&page));
    let s =
        settings::Homie1Settings::load(&mut flash, &table, [0; 6], &mut |_: &crate::log::LogEvent<'_>| {});
    assert_eq!((s.id.as_str(), s.ota_enabled), ("dev-1", false));
    // What the device would not keep is refused before it is written.
    let https = settings::Provision { url: Some("https://10.0.2.2/ota"), ..one };
    assert_eq!(
        provisioning_page(&BASE_SETTINGS, &[&https]),
        Err(ProvisionError::setting(
            "Homie 1.x OTA server",
            SettingProblem::Malformed { expected: "http://host[:port]/path" }
        ))
    );
    let bad_id = settings::Provision { id: Some("Dev_1"), ..one };
    use std::string::ToString;
    assert!(
        provisioning_page(&BASE_SETTINGS, &[&bad_id])
            .unwrap_err()
            .to_string()
            .starts_with("Homie device id: expected 1 to 32")
    );
}
