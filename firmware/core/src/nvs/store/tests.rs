use super::*;
use crate::flash::ram::RamFlash;
use crate::nvs::{PageBuilder, Value, get};
use crate::partition::{SUBTYPE_DATA_NVS, TYPE_DATA};
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

const BASE: u32 = 0x9000;

fn part(pages: u32) -> Partition {
    Partition::new("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, BASE, pages * PAGE_SIZE as u32, 0)
}

/// A flash holding a provisioned page (as the harness writes it) in a `pages`-page partition.
fn provisioned(pages: u32) -> (RamFlash, Partition) {
    let mut f = RamFlash::new((BASE + pages * PAGE_SIZE as u32) as usize);
    let mut b = PageBuilder::new(0);
    let ns = b.namespace("otahil").unwrap();
    b.str(ns, "ota_password", "hunter2").unwrap();
    b.u8(ns, "ota_protocol", 2).unwrap();
    f.data[BASE as usize..BASE as usize + PAGE_SIZE].copy_from_slice(&b.finish());
    (f, part(pages))
}

fn u32_of(f: &mut RamFlash, p: &Partition, key: &str) -> Option<u32> {
    let mut buf = [0u8; 8];
    match get(f, p, "otahil", key, &mut buf) {
        Ok(Some(Value::U32(v))) => Some(v),
        Ok(None) => None,
        other => panic!("{key}: {other:?}"),
    }
}

fn str_of(f: &mut RamFlash, p: &Partition, key: &str) -> Option<String> {
    let mut buf = [0u8; 300];
    match get(f, p, "otahil", key, &mut buf) {
        Ok(Some(Value::Str(s))) => Some(s.to_string()),
        Ok(None) => None,
        other => panic!("{key}: {other:?}"),
    }
}

#[track_caller]
fn settings_intact(f: &mut RamFlash, p: &Partition) {
    let mut buf = [0u8; 64];
    assert_eq!(get(f, p, "otahil", "ota_password", &mut buf), Ok(Some(Value::Str("hunter2"))));
    assert_eq!(get(f, p, "otahil", "ota_protocol", &mut buf), Ok(Some(Value::U8(2))));
}

fn written_copies(f: &mut RamFlash, p: &Partition, key: &str) -> usize {
    let k = key_bytes(key).unwrap();
    let mut n = 0;
    super::super::scan(f, p, |_, _, e| {
        if e[0] == 1 && e[8..24] == k[..] {
            n += 1;
        }
    })
    .unwrap();
    n
}

#[test]
fn values_round_trip_and_old_copies_are_erased() {
    let (mut f, p) = provisioned(3);
    set_u32(&mut f, &p, "otahil", "resume_at", 4096).unwrap();
    set_str(&mut f, &p, "otahil", "resume_url", "http://10.0.2.2:8080/v2.bin").unwrap();
    set_u32(&mut f, &p, "otahil", "resume_at", 8192).unwrap();
    set_u8(&mut f, &p, "otahil", "pull_resume", 1).unwrap();
    assert_eq!(u32_of(&mut f, &p, "resume_at"), Some(8192));
    assert_eq!(str_of(&mut f, &p, "resume_url").as_deref(), Some("http://10.0.2.2:8080/v2.bin"));
    assert_eq!(written_copies(&mut f, &p, "resume_at"), 1);
    settings_intact(&mut f, &p);
    erase(&mut f, &p, "otahil", "resume_at").unwrap();
    assert_eq!(u32_of(&mut f, &p, "resume_at"), None);
    erase(&mut f, &p, "otahil", "never_set").unwrap();
    assert_eq!(set_str(&mut f, &p, "otahil", "k", &"x".repeat(MAX_STORED_STR + 1)), Err(StoreError::BadItem));
    assert_eq!(set_u32(&mut f, &p, "otahil", "a_key_too_long_", 1), Ok(()));
    assert_eq!(set_u32(&mut f, &p, "otahil", "a_key_much_too_long", 1), Err(StoreError::BadItem));
}

#[test]
fn a_blank_partition_gets_a_page_and_the_namespace() {
    let mut f = RamFlash::new((BASE + 2 * PAGE_SIZE as u32) as usize);
    let p = part(2);
    set_u32(&mut f, &p, "otahil", "resume_at", 7).unwrap();
    assert_eq!(crate::nvs::namespace_index(&mut f, &p, "otahil"), Ok(Some(1)));
    set_u32(&mut f, &p, "other", "x", 9).unwrap();
    assert_eq!(crate::nvs::namespace_index(&mut f, &p, "other"), Ok(Some(2)));
    assert_eq!(u32_of(&mut f, &p, "resume_at"), Some(7));
}

#[test]
fn thousands_of_writes_roll_pages_and_collect_the_oldest() {
    let (mut f, p) = provisioned(3);
    let url = "https://firmware.example:8443/fleet/v2.bin";
    set_str(&mut f, &p, "otahil", "resume_url", url).unwrap();
    for v in 0..3000u32 {
        set_u32(&mut f, &p, "otahil", "resume_at", v * 1024).unwrap();
    }
    assert_eq!(u32_of(&mut f, &p, "resume_at"), Some(2999 * 1024));
    assert_eq!(str_of(&mut f, &p, "resume_url").as_deref(), Some(url));
    settings_intact(&mut f, &p);
    // Always one page spare, never more than one copy of a key.
    let mut uninitialised = 0;
    for page in 0..3 {
        let info = page_info(&mut f, &p, page).unwrap();
        if info.state == 0xFFFF_FFFF {
            uninitialised += 1;
        }
    }
    assert_eq!(uninitialised, 1);
    assert_eq!(written_copies(&mut f, &p, "resume_at"), 1);
}

#[test]
fn a_full_partition_says_so() {
    let mut f = RamFlash::new((BASE + PAGE_SIZE as u32) as usize);
    let p = part(1);
    let mut failed = None;
    for i in 0..200 {
        if let Err(e) = set_u32(&mut f, &p, "otahil", &format!("k{i}"), i) {
            failed = Some((i, e));
            break;
        }
    }
    // One page: the namespace and 125 items, then no room.
    assert_eq!(failed, Some((125, StoreError::Full)));
    assert_eq!(u32_of(&mut f, &p, "k124"), Some(124));
}

/// The sequence the power-cut test replays: a URL, then rising offsets across page roll-overs
/// and collections.
fn sequence(f: &mut RamFlash, p: &Partition, values: std::ops::Range<u32>) -> Result<(), StoreError> {
    for v in values {
        if v % 97 == 0 {
            set_str(f, p, "otahil", "resume_url", &format!("http://10.0.2.2/v{v}.bin"))?;
        }
        set_u32(f, p, "otahil", "resume_at", v)?;
    }
    Ok(())
}

#[test]
fn a_power_cut_at_any_operation_keeps_the_old_or_the_new_value() {
    // 300 writes on 3 pages: two roll-overs and a collection.
    let (mut clean, p) = provisioned(3);
    sequence(&mut clean, &p, 0..300).unwrap();
    let total = clean.ops.len();
    assert!(total > 600, "{total} operations");
    for cut in 0..total {
        let (mut f, p) = provisioned(3);
        f.fail_after = Some(cut);
        let _ = sequence(&mut f, &p, 0..300);
        f.fail_after = None;
        // The value is one the sequence wrote (`a_cut_never_loses_a_confirmed_value` pins which).
        if let Some(v) = u32_of(&mut f, &p, "resume_at") {
            assert!(v < 300, "cut {cut}: {v}");
        }
        settings_intact(&mut f, &p);
        // The next writes recover whatever the cut left and are read back.
        sequence(&mut f, &p, 300..400).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(u32_of(&mut f, &p, "resume_at"), Some(399), "cut {cut}");
        assert_eq!(
            str_of(&mut f, &p, "resume_url").as_deref(),
            Some("http://10.0.2.2/v388.bin"),
            "cut {cut}"
        );
        let mut buf = [0u8; 64];
        assert_eq!(
            get(&mut f, &p, "otahil", "ota_password", &mut buf),
            Ok(Some(Value::Str("hunter2"))),
            "cut {cut}"
        );
        settings_intact(&mut f, &p);
        assert_eq!(written_copies(&mut f, &p, "resume_at"), 1, "cut {cut}");
    }
}

#[test]
fn a_cut_never_loses_a_confirmed_value() {
    // Replays the sequence write by write: after each completed write the value is that one;
    // a cut inside the next write leaves it or the next.
    let (mut clean, p) = provisioned(3);
    let mut ends = Vec::new();
    for v in 0..250u32 {
        set_u32(&mut clean, &p, "otahil", "resume_at", v).unwrap();
        ends.push(clean.ops.len());
    }
    let mut cut = 0;
    for (v, &end) in ends.iter().enumerate() {
        while cut < end {
            let (mut f, p) = provisioned(3);
            f.fail_after = Some(cut);
            for w in 0..250u32 {
                if set_u32(&mut f, &p, "otahil", "resume_at", w).is_err() {
                    break;
                }
            }
            f.fail_after = None;
            let got = u32_of(&mut f, &p, "resume_at");
            let v = v as u32;
            let ok =
                if v == 0 { got.is_none() || got == Some(0) } else { got == Some(v - 1) || got == Some(v) };
            assert!(ok, "cut {cut} inside write {v}: read {got:?}");
            settings_intact(&mut f, &p);
            cut += 1;
        }
    }
}
