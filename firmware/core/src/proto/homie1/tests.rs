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
