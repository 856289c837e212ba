//! Wi-Fi for boards (`--features wifi`): esp-radio's station interface, run by the esp-rtos
//! scheduler, joined with the credentials provisioned in NVS (or built in), and handed to the
//! OTA service as a smoltcp device with DHCP addressing.
//!
//! esp-radio offers the interface as an embassy-net driver and only an async `connect`; the
//! service is a polled smoltcp loop, so this module polls both: the driver through a no-op
//! waker (the loop polls again at once anyway), the connect future to completion while the
//! scheduler runs the radio's own tasks preemptively.

use crate::net::LinkWatch;
use core::fmt::Write as _;
use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use esp_hal::peripherals::{FROM_CPU_INTR0, TIMG0, WIFI};
use esp_hal::time::{Duration, Instant};
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config, ControllerConfig, Interface, WifiController};
use ota_core::log::LogEvent;
use ota_core::wifi::NetLine;
use ota_core::wifi::WifiCredentials;
use smoltcp::phy::{self, DeviceCapabilities, Medium};

/// Credentials built in (`OTAHIL_FW_WIFI_SSID`, `OTAHIL_FW_WIFI_PASSWORD`); NVS keys
/// `otahil/wifi_ssid` and `otahil/wifi_password` override them.
pub const BUILT_IN_SSID: &str = match option_env!("OTAHIL_FW_WIFI_SSID") {
    Some(s) => s,
    None => "",
};
pub const BUILT_IN_PASSWORD: &str = match option_env!("OTAHIL_FW_WIFI_PASSWORD") {
    Some(s) => s,
    None => "",
};

const RETRY: Duration = Duration::from_secs(5);
/// How often the service loop asks whether the station is still associated.
const LINK_CHECK: Duration = Duration::from_millis(500);

/// An embassy-net driver seen as a smoltcp device.
pub struct Polled<D>(D);

pub struct Rx<T>(T);
pub struct Tx<T>(T);

impl<T: embassy_net_driver::RxToken> phy::RxToken for Rx<T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        self.0.consume(|frame| f(frame))
    }
}

impl<T: embassy_net_driver::TxToken> phy::TxToken for Tx<T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.consume(len, f)
    }
}

impl<D: embassy_net_driver::Driver> phy::Device for Polled<D> {
    type RxToken<'a>
        = Rx<D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let mut cx = Context::from_waker(Waker::noop());
        self.0.receive(&mut cx).map(|(rx, tx)| (Rx(rx), Tx(tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        let mut cx = Context::from_waker(Waker::noop());
        self.0.transmit(&mut cx).map(Tx)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        // As embassy-net converts them: the driver's MTU and burst size, checksums in software.
        let driver = self.0.capabilities();
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = driver.max_transmission_unit;
        caps.max_burst_size = driver.max_burst_size;
        caps
    }
}

/// Polls `future` until it is ready; the scheduler preempts this loop for the radio's tasks.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
    }
}

/// A `Debug` rendering cut to fit a log line.
struct ShortText {
    buf: [u8; 96],
    len: usize,
}

impl core::fmt::Write for ShortText {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for ch in s.chars() {
            let mut utf8 = [0u8; 4];
            let bytes = ch.encode_utf8(&mut utf8).as_bytes();
            if self.len + bytes.len() > self.buf.len() {
                return Err(core::fmt::Error);
            }
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

impl ShortText {
    fn of(value: &dyn core::fmt::Debug) -> Self {
        let mut text = ShortText { buf: [0; 96], len: 0 };
        let _ = write!(text, "{value:?}");
        text
    }

    fn as_str(&self) -> &str {
        // Whole characters only are ever written.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// The station's controller and credentials, for rejoining.
pub struct Link {
    controller: WifiController<'static>,
    credentials: WifiCredentials,
    checked: Instant,
}

impl Link {
    /// Joins the network, retrying every 5 s until it succeeds (nothing else to do without it).
    fn join(&mut self, log: &mut dyn FnMut(&LogEvent<'_>)) {
        log(&LogEvent::Module(&NetLine::WifiJoining {
            ssid: self.credentials.ssid(),
            from: self.credentials.from,
        }));
        loop {
            match block_on(self.controller.connect_async()) {
                Ok(info) => {
                    log(&LogEvent::Module(&NetLine::WifiJoined { channel: info.channel }));
                    return;
                }
                Err(e) => {
                    let reason = ShortText::of(&e);
                    log(&LogEvent::Module(&NetLine::WifiJoinFailed {
                        reason: reason.as_str(),
                        retry_in_s: RETRY.as_secs() as u8,
                    }));
                    let until = Instant::now() + RETRY;
                    while Instant::now() < until {
                        core::hint::spin_loop();
                    }
                }
            }
        }
    }
}

impl LinkWatch for Link {
    fn check(&mut self, log: &mut dyn FnMut(&LogEvent<'_>)) {
        if self.checked.elapsed() < LINK_CHECK {
            return;
        }
        self.checked = Instant::now();
        if !self.controller.is_connected() {
            self.join(log);
        }
    }
}

/// Starts the heap, the scheduler and the radio, joins the network, and returns the station
/// interface as a smoltcp device, its MAC address and the link watcher. Without credentials
/// the device says so and stays off the network (a reset after provisioning brings it up).
pub fn up(
    wifi: WIFI<'static>,
    timg0: TIMG0<'static>,
    int0: FROM_CPU_INTR0<'static>,
    credentials: Option<WifiCredentials>,
    log: &mut dyn FnMut(&LogEvent<'_>),
) -> (Polled<Interface>, [u8; 6], Link) {
    let Some(credentials) = credentials else {
        log(&LogEvent::Module(&NetLine::WifiNoCredentials));
        crate::halt(&"no network to join")
    };
    esp_alloc::heap_allocator!(size: 72 * 1024);
    esp_rtos::start(esp_hal::timer::timg::TimerGroup::new(timg0).timer0, int0);
    let authentication = if credentials.password().is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        match credentials.password().try_into() {
            Ok(p) => AuthenticationMethodConfig::Wpa2Personal(p),
            Err(e) => crate::halt(&format_args!("Wi-Fi password rejected: {e:?}")),
        }
    };
    let ssid = match credentials.ssid().try_into() {
        Ok(s) => s,
        Err(e) => crate::halt(&format_args!("SSID rejected: {e:?}")),
    };
    let station = StationConfig::default().with_ssid(ssid).with_authentication(authentication);
    let config = ControllerConfig::default().with_initial_config(Config::Station(station));
    let controller = match WifiController::new(wifi, config) {
        Ok(c) => c,
        Err(e) => crate::halt(&format_args!("Wi-Fi does not start: {e:?}")),
    };
    let interface = Interface::station();
    let mac = interface.mac_address();
    let mut link = Link { controller, credentials, checked: Instant::now() };
    link.join(log);
    (Polled(interface), mac, link)
}
