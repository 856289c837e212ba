use super::*;

fn parse_text(text: &str) -> Result<Bench, BenchError> {
    parse(text, Path::new("bench.yaml"))
}

/// The error's `line:column: message`.
fn error(text: &str) -> String {
    let e = parse_text(text).expect_err("the bench file is refused");
    format!("{}:{}: {}", e.line, e.column, e.message)
}

#[test]
fn the_example_documents_every_field_and_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bench.example.yaml");
    let b = load(&path).unwrap();
    assert_eq!(b.name, "lab-c3-1");
    assert!(matches!(&b.port, PortSpec::Path(p) if p.starts_with("/dev/serial/by-id")));
    assert!(b.log_port.is_some());
    assert_eq!((b.baud, b.flash_baud, b.flash), (115_200, 921_600, FlashMethod::Espflash));
    assert_eq!(b.reset, ResetMethod::Auto);
    let Some(PowerSwitch::Commands { off, on, settle }) = &b.power else { panic!("{:?}", b.power) };
    assert_eq!(
        (off[0].as_str(), on.last().map(String::as_str), *settle),
        ("uhubctl", Some("on"), Duration::from_millis(500))
    );
    assert!(matches!(&b.address, Address::Fixed(a) if a == "192.168.50.21"));
    assert_eq!(b.harness_address, Some("192.168.50.2".parse().unwrap()));
    assert_eq!((b.esphome_port, b.arduino_port), (3232, 3232));
    assert_eq!(b.wifi, Some(Wifi { ssid: "otahil-lab".into(), password: "correct-horse".into() }));
    // Every key of the raw schema appears in the example (commented alternatives aside).
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "name:",
        "port:",
        "log_port:",
        "baud:",
        "flash_baud:",
        "flash:",
        "probe:",
        "reset:",
        "power:",
        "address:",
        "address_from_log:",
        "harness_address:",
        "esphome_port:",
        "arduino_port:",
        "web_port:",
        "wifi:",
        "settle:",
        "usb:",
        "mac:",
        "command:",
    ] {
        assert!(text.contains(key), "the example does not show `{key}`");
    }
}

#[test]
fn the_emulator_stand_in_loads_with_its_control_channel_as_power_switch() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bench.emu.yaml");
    let b = load(&path).unwrap();
    assert_eq!(
        (b.port.clone(), b.reset.clone(), b.power.clone()),
        (PortSpec::Emulator, ResetMethod::None, Some(PowerSwitch::Emulator))
    );
    assert!(matches!(b.address, Address::Emulator));
    assert!(b.has_power_switch());
}

#[test]
fn qemu_as_the_board_loads_with_the_rom_only() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bench.qemu.yaml");
    let b = load(&path).unwrap();
    assert_eq!(
        (b.port.clone(), b.flash, b.power.clone()),
        (PortSpec::Qemu, FlashMethod::EspflashNoStub, Some(PowerSwitch::Qemu))
    );
    assert_eq!(b.firmware(), "qemu");
    let e = error("name: b\nport: qemu\nflash: espflash\n");
    assert!(e.contains("the stub does not finish writing under QEMU"), "{e}");
    assert!(e.starts_with("3:"), "{e}");
    assert!(error("name: b\nport: qemu\npower: emulator\n").contains("only with port: emulator"));
    assert_eq!(parse_text("name: b\nport: qemu\n").unwrap().flash, FlashMethod::EspflashNoStub);
}

#[test]
fn ports_by_usb_id_and_by_mac() {
    let b = parse_text("name: b\nport: { usb: \"303a:1001\", serial: ABC }\naddress: dut.local\n").unwrap();
    assert_eq!(b.port, PortSpec::Usb { vid: 0x303a, pid: 0x1001, serial: Some("ABC".into()) });
    let b = parse_text("name: b\nport: { mac: \"C4-0A-24-FE-10-01\" }\naddress: 10.0.0.2\n").unwrap();
    assert_eq!(b.port, PortSpec::Mac([0xc4, 0x0a, 0x24, 0xfe, 0x10, 0x01]));
    assert!(!b.has_power_switch(), "no power section, no power switch");
    let b = parse_text("name: b\nport: /dev/ttyACM0\naddress_from_log: 'address (\\S+)/'\n").unwrap();
    assert!(matches!(b.address, Address::FromLog(_)));
}

#[test]
fn bad_values_are_refused_at_their_place_in_the_benchs_words() {
    let base = "name: b\nport: /dev/ttyACM0\naddress: 10.0.0.2\n";
    assert_eq!(
        error("name: b\nport: { usb: \"303a\" }\naddress: x\n"),
        "2:7: port usb `303a`: expected VID:PID in hex, such as 303a:1001"
    );
    assert!(error("name: b\nport: { mac: \"c4:0a\" }\naddress: x\n").contains("expected six hex bytes"));
    assert!(
        error("name: b\nport: [1, 2]\naddress: x\n").contains("port: expected a device path, `emulator`")
    );
    assert_eq!(error(&format!("{base}baud: 42\n")), "4:7: baud 42: expected 9600 to 3000000");
    assert!(
        error(&format!("{base}flash: esptool\n"))
            .contains("flash `esptool`: expected espflash, espflash-no-stub or probe-rs")
    );
    assert!(
        error(&format!("{base}flash: espflash\nprobe: 303a:1001\n"))
            .contains("probe: only with flash: probe-rs")
    );
    assert!(error(&format!("{base}reset: sometimes\n")).contains("reset `sometimes`: expected auto"));
    assert!(
        error(&format!("{base}reset: {{ command: [] }}\n")).contains("reset command: expected a program")
    );
    assert!(
        error(&format!("{base}power: {{ switch_off: [x], switch_on: [] }}\n"))
            .contains("power switch_on: expected a program")
    );
    let e = error(&format!("{base}power: {{ switch_off: [p], switch_on: [q], settle: 2h }}\n"));
    assert!(e.contains("up to 60s"), "{e}");
    assert!(error(&format!("{base}power: emulator\n")).contains("only with port: emulator"));
    assert!(
        error(&format!("{base}address_from_log: 'address \\S+'\n"))
            .contains("address and address_from_log: give one")
    );
    assert!(
        error("name: b\nport: /dev/x\naddress_from_log: 'no group'\n").contains("exactly one capture group")
    );
    assert!(error("name: b\nport: /dev/x\naddress_from_log: '(unclosed'\n").contains("not a regex"));
    assert!(error("name: b\nport: /dev/x\n").contains("no address: give address"));
    assert!(error(&format!("{base}wifi: {{ ssid: lab, password: short }}\n")).contains("WPA2 takes 8 to 63"));
    assert!(error(&format!("{base}wifi: {{ ssid: \"\" }}\n")).contains("ssid of 0 bytes"));
    assert!(error(&format!("{base}esphome_port: 0\n")).contains("esphome_port 0"));
    for port in ["70000", "-1"] {
        let e = error(&format!("{base}arduino_port: {port}\n"));
        assert!(
            e.contains("expected a port from 1 to 65535") || e.contains("expected a whole number"),
            "{e}"
        );
        assert!(!e.contains("u16") && !e.contains("u64"), "{e}");
    }
    assert!(
        error(&format!("{base}harness_address: lab-pc.local\n"))
            .contains("harness_address `lab-pc.local`: expected this machine's IP address")
    );
    assert!(
        error(&format!("{base}harness_address: 0.0.0.0\n")).contains("expected this machine's IP address")
    );
    assert!(
        error("name: b\nport: emulator\nharness_address: 10.0.0.1\n")
            .contains("harness_address: the emulator")
    );
    assert!(error(&format!("{base}colour: blue\n")).contains("colour"));
    assert!(
        error("name: b\nport: emulator\nlog_port: /dev/ttyUSB0\n")
            .contains("log_port: the emulator's log is on its UART")
    );
    assert!(
        error("name: b\nport: emulator\naddress: 10.0.0.2\n")
            .contains("the emulator's endpoints are its own")
    );
    assert!(error("name: b\nport: emulator\nreset: classic\n").contains("control channel"));
    assert!(error("name: b c\nport: /dev/x\naddress: y\n").starts_with("1:7: name must be"));
}

#[test]
fn probe_rs_needs_its_feature_a_real_board_and_a_probe_in_hex() {
    let load_text =
        |text: &str| parse_text(text).map_err(|e| format!("{}:{}: {}", e.line, e.column, e.message));
    let e = load_text("name: b\nport: emulator\nflash: probe-rs\n").unwrap_err();
    assert!(e.contains("3:8: flash probe-rs: a stand-in (the emulator, QEMU) has no USB-JTAG"), "{e}");
    let by_usb = "name: b\nport: { usb: \"303a:1001\", serial: \"AA:BB\" }\naddress: x\nflash: probe-rs\n";
    if !HAS_PROBE_RS {
        let e = load_text(by_usb).unwrap_err();
        assert!(e.contains("4:8: flash probe-rs: this otahil was built without probe-rs; build it with `--features probe-rs`"), "{e}");
        return;
    }
    // The probe defaults to the board's own USB-JTAG, with the port's serial number.
    let b = load_text(by_usb).unwrap();
    assert_eq!(b.flash, FlashMethod::ProbeRs);
    assert_eq!(b.probe, Some(ProbeSpec { vid: 0x303a, pid: 0x1001, serial: Some("AA:BB".into()) }));
    let b = load_text("name: b\nport: /dev/ttyACM0\naddress: x\nflash: probe-rs\n").unwrap();
    assert_eq!(b.probe, Some(ProbeSpec { vid: 0x303a, pid: 0x1001, serial: None }));
    // A serial number may itself hold colons (a MAC).
    let b = load_text(
        "name: b\nport: /dev/ttyACM0\naddress: x\nflash: probe-rs\nprobe: 303a:1001:C4:0A:24:FE:10:01\n",
    )
    .unwrap();
    assert_eq!(
        b.probe,
        Some(ProbeSpec { vid: 0x303a, pid: 0x1001, serial: Some("C4:0A:24:FE:10:01".into()) })
    );
    let e =
        load_text("name: b\nport: /dev/ttyACM0\naddress: x\nflash: probe-rs\nprobe: esp-prog\n").unwrap_err();
    assert!(e.contains("5:8: probe `esp-prog`: expected VID:PID or VID:PID:SERIAL in hex"), "{e}");
}
