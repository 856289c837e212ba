//! A person at the device's pages, played by a real headless Chromium (Debian's `chromium`)
//! over the DevTools protocol: load a page, read what it offers, pick a file for an input,
//! press a button, wait for the next page, read what it says, keep a screenshot. The paths that
//! serve pages (the upload form) use it when a step asks for `browser: true`. Without the
//! `browser` cargo feature or without a Chromium on this machine the step is skipped, saying
//! which.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a browser step could not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("no Chromium: set OTAHIL_CHROMIUM or install Debian's `chromium` ({0})")]
    NotFound(String),
    #[error("this otahil was built without browser support (cargo feature `browser`)")]
    NotBuilt,
    #[error("Chromium: {0}")]
    Driver(String),
    #[error("the page has no {0}")]
    Missing(String),
    #[error("the browser did not finish within {0:?}")]
    Timeout(Duration),
}

/// The Chromium to drive: `OTAHIL_CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Result<PathBuf, BrowserError> {
    if let Some(p) = std::env::var_os("OTAHIL_CHROMIUM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BrowserError::NotFound(format!("OTAHIL_CHROMIUM={} is not a file", p.display())))
        };
    }
    let names = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(BrowserError::NotFound(format!("none of {} on PATH", names.join(", "))))
}

/// One upload through a page's file input, as a person does it.
#[derive(Debug, Clone)]
pub struct PageUpload<'a> {
    /// The page with the form.
    pub url: &'a str,
    /// Basic credentials, sent with every request (what the browser's login prompt would).
    pub credentials: Option<(&'a str, &'a str)>,
    /// The file to pick.
    pub file: &'a Path,
    /// The file input, as a CSS selector.
    pub input: &'a str,
    /// How the page sends the file.
    pub submit: Submit<'a>,
    /// Where the final page's screenshot goes.
    pub screenshot: Option<&'a Path>,
    /// What the person does after the upload, if anything.
    pub follow: Option<FollowUp<'a>>,
    pub timeout: Duration,
}

/// How a page sends the file picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit<'a> {
    /// The submit button of the input's own form: the next page says how it went.
    FormButton,
    /// Picking the file starts the page's script (ElegantOTA): `before` runs first (a mode
    /// chosen), `start` after the pick (a Start button pressed, where the page has one), and
    /// `result`, a script expression, is `''` until the page says how it went.
    Script { before: Option<&'a str>, start: Option<&'a str>, result: &'a str },
}

/// What the person does after the upload, on a page that restarts the device and then asks
/// about the new image (the WebSocket OTA page).
#[derive(Debug, Clone, Copy)]
pub struct FollowUp<'a> {
    /// Run once the upload's result is read: presses Restart where the page offers it and says
    /// whether it did (`false`: nothing follows).
    pub press: &'a str,
    /// True once the page saw the device go (its socket closed): waited for after `press`.
    pub gone: &'a str,
    /// After the restart: the page is loaded again until `ready` (an expression) is true, then
    /// `answer` runs (Keep, Roll back) and its value is what the page says at once (read in the
    /// same breath: a rollback restarts the device, and the page then reloads itself).
    pub then: Option<(&'a str, &'a str)>,
    /// Where the last page's screenshot goes.
    pub screenshot: Option<&'a Path>,
}

/// What the person saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageResult {
    /// The form page's file inputs: (name, accept).
    pub inputs: Vec<(String, String)>,
    /// The page after the upload, as text (`document.body.innerText`), or what the script's
    /// `result` said.
    pub text: String,
    /// Its `<meta http-equiv=refresh>` content, if any (where the page goes next).
    pub refresh: Option<String>,
    /// What the page said after the follow-up's answer, if it had one.
    pub answered: Option<String>,
}

#[cfg(feature = "browser")]
mod driver {
    use super::{BrowserError, PageResult, PageUpload};
    use chromiumoxide::browser::{Browser, BrowserConfig};
    use chromiumoxide::cdp::browser_protocol::dom::SetFileInputFilesParams;
    use chromiumoxide::cdp::browser_protocol::network::{Headers, SetExtraHttpHeadersParams};
    use chromiumoxide::page::ScreenshotParams;
    use futures_util::StreamExt;

    fn driver(e: impl std::fmt::Display) -> BrowserError {
        BrowserError::Driver(e.to_string())
    }

    pub async fn upload(chromium: &std::path::Path, up: &PageUpload<'_>) -> Result<PageResult, BrowserError> {
        let profile = tempfile::tempdir().map_err(driver)?;
        // Flags as the machine's notes say: without the background-networking ones Chromium
        // keeps reaching for Google's hosts, which a closed network refuses.
        let config = BrowserConfig::builder()
            .chrome_executable(chromium)
            .no_sandbox()
            .user_data_dir(profile.path())
            .args(["disable-gpu", "disable-quic", "disable-component-update", "disable-sync"])
            .request_timeout(up.timeout)
            .launch_timeout(up.timeout)
            .build()
            .map_err(BrowserError::Driver)?;
        let (mut browser, mut handler) = Browser::launch(config).await.map_err(driver)?;
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let result = drive(&browser, up).await;
        let _ = browser.close().await;
        let _ = browser.wait().await;
        events.abort();
        result
    }

    async fn drive(browser: &Browser, up: &PageUpload<'_>) -> Result<PageResult, BrowserError> {
        let page = browser.new_page("about:blank").await.map_err(driver)?;
        if let Some((user, password)) = up.credentials {
            let token =
                String::from_utf8_lossy(&crate::client::base64(format!("{user}:{password}").as_bytes()))
                    .into_owned();
            let headers = Headers::new(serde_json::json!({ "Authorization": format!("Basic {token}") }));
            page.execute(SetExtraHttpHeadersParams::new(headers)).await.map_err(driver)?;
        }
        page.goto(up.url).await.map_err(driver)?;
        page.wait_for_navigation().await.map_err(driver)?;
        let inputs: Vec<(String, String)> = page
            .evaluate(
                "Array.from(document.querySelectorAll('input[type=file]')).map(i => [i.name, i.accept])",
            )
            .await
            .map_err(driver)?
            .into_value()
            .map_err(driver)?;
        if let super::Submit::Script { before: Some(js), .. } = up.submit {
            page.evaluate(js).await.map_err(driver)?;
        }
        let selector = up.input.to_string();
        let input =
            page.find_element(&selector).await.map_err(|_| BrowserError::Missing(selector.clone()))?;
        let file = up.file.to_string_lossy().into_owned();
        let pick = SetFileInputFilesParams::builder()
            .file(file)
            .backend_node_id(input.backend_node_id)
            .build()
            .map_err(BrowserError::Driver)?;
        // Chromium fires the input's `change` as a person's pick does.
        page.execute(pick).await.map_err(driver)?;
        if let super::Submit::Script { result, start, .. } = up.submit {
            if let Some(js) = start {
                page.evaluate(js).await.map_err(driver)?;
            }
            let text = said(&page, result).await?;
            if let Some(path) = up.screenshot {
                page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), path)
                    .await
                    .map_err(driver)?;
            }
            let mut answered = None;
            if let Some(follow) = &up.follow {
                let pressed: bool =
                    page.evaluate(follow.press).await.map_err(driver)?.into_value().unwrap_or(false);
                // The device goes: the page's socket closes (then the page reloads itself).
                let pause = std::time::Duration::from_millis(100);
                while let Ok(Ok(false)) = page.evaluate(follow.gone).await.map(|r| r.into_value::<bool>()) {
                    tokio::time::sleep(pause).await;
                }
                if let Some((ready, answer)) = follow.then.filter(|_| pressed) {
                    // The page is loaded again (as its own 2 s reload does) until it offers the
                    // answer: a load while the device is down fails; a loaded page's socket
                    // opens a moment later, so it is asked for some seconds before another load.
                    'load: loop {
                        if page.goto(up.url).await.is_ok() {
                            for _ in 0..50 {
                                if let Ok(Ok(true)) =
                                    page.evaluate(ready).await.map(|r| r.into_value::<bool>())
                                {
                                    break 'load;
                                }
                                tokio::time::sleep(pause).await;
                            }
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    let text: String =
                        page.evaluate(answer).await.map_err(driver)?.into_value().map_err(driver)?;
                    answered = Some(text);
                    if let Some(path) = follow.screenshot {
                        page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), path)
                            .await
                            .map_err(driver)?;
                    }
                }
            }
            return Ok(PageResult { inputs, text, refresh: None, answered });
        }
        // The submit button of the input's own form, pressed after this call returns: the
        // navigation it starts replaces the page the call runs in.
        input
            .call_js_fn(
                "function() { const b = this.form.querySelector('input[type=submit]'); setTimeout(() => b.click(), 0); }",
                false,
            )
            .await
            .map_err(driver)?;
        // The next page is there when the form is gone and it has loaded; while the browser
        // navigates, a question to the page may fail: ask again.
        let left = "document.readyState === 'complete' && !document.querySelector('input[type=file]')";
        loop {
            match page.evaluate(left).await.map(|r| r.into_value::<bool>()) {
                Ok(Ok(true)) => break,
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let text: String = page
            .evaluate("document.body ? document.body.innerText : ''")
            .await
            .map_err(driver)?
            .into_value()
            .map_err(driver)?;
        // (An empty string for none: a null result is no value to the driver.)
        let refresh: String = page
            .evaluate("(() => { const m = document.querySelector('meta[http-equiv=refresh]'); return m ? m.content : ''; })()")
            .await
            .map_err(driver)?
            .into_value()
            .map_err(driver)?;
        let refresh = (!refresh.is_empty()).then_some(refresh);
        if let Some(path) = up.screenshot {
            page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), path)
                .await
                .map_err(driver)?;
        }
        Ok(PageResult { inputs, text, refresh, answered: None })
    }

    /// `result`'s value once it is not `''`.
    async fn said(page: &chromiumoxide::Page, result: &str) -> Result<String, BrowserError> {
        loop {
            let said: String = page.evaluate(result).await.map_err(driver)?.into_value().map_err(driver)?;
            if !said.is_empty() {
                return Ok(said);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Uploads `up.file` through the page at `up.url` in a fresh headless Chromium.
pub async fn upload(up: &PageUpload<'_>) -> Result<PageResult, BrowserError> {
    #[cfg(feature = "browser")]
    {
        let chromium = find_chromium()?;
        match tokio::time::timeout(up.timeout, driver::upload(&chromium, up)).await {
            Ok(r) => r,
            Err(_) => Err(BrowserError::Timeout(up.timeout)),
        }
    }
    #[cfg(not(feature = "browser"))]
    {
        let _ = up;
        Err(BrowserError::NotBuilt)
    }
}

/// Whether browser steps can run here, or why not.
pub fn available() -> Result<PathBuf, BrowserError> {
    if !cfg!(feature = "browser") {
        return Err(BrowserError::NotBuilt);
    }
    find_chromium()
}
