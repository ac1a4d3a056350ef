//! The configuration file parser on arbitrary UTF-8: never panics (an error names a position
//! inside the text), and a file it accepts round-trips: its settings written back as a file
//! parse to the same settings.
#![no_main]

use std::fmt::Write as _;

use intercept_common::config::{DropMode, Mode};
use intercept_ctl::config::{Settings, parse};
use libfuzzer_sys::fuzz_target;

/// `s` as a TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as a configuration file, every key written.
fn render(s: &Settings) -> String {
    let mut f = String::new();
    if let Some(m) = s.mode {
        let m = match m {
            Mode::Off => "off",
            Mode::Intercept => "intercept",
            Mode::Watch => "watch",
            Mode::Auto => "auto",
        };
        let _ = writeln!(f, "mode = {}", q(m));
    }
    let ex: Vec<String> = s.exempt.iter().map(|e| q(e)).collect();
    let _ = writeln!(f, "exempt = [{}]", ex.join(", "));
    let (mss_v4, mss_v6, window, wscale, ttl, ecn) = s.synack;
    let _ = writeln!(
        f,
        "[synack]\nmss_v4 = {mss_v4}\nmss_v6 = {mss_v6}\nwindow = {window}\nwscale = {wscale}\nttl = {ttl}\necn = {ecn}"
    );
    let w = &s.watch;
    let _ = writeln!(
        f,
        "[watch]\ntimeout = {}\nmax_incomplete_high = {}\nmax_incomplete_low = {}\none_minute_high = {}\none_minute_low = {}\nrate_window = {}\ndrop_mode = {}",
        w.timeout_ms / 1000,
        w.max_incomplete_high,
        w.max_incomplete_low,
        w.one_minute_high,
        w.one_minute_low,
        w.rate_window_s,
        q(match s.drop_mode {
            DropMode::Oldest => "oldest",
            DropMode::Random => "random",
        })
    );
    if let Some(r) = s.rotate_every {
        let _ = writeln!(f, "[secrets]\nrotate_every = {r}");
    }
    if let Some(a) = s.metrics_listen {
        let _ = writeln!(f, "[metrics]\nlisten = {}", q(&a.to_string()));
    }
    // One [[protect]] per prefix and port (port 0: every port).
    for (p, port) in &s.protect {
        let _ = writeln!(f, "[[protect]]\nprefix = {}", q(p));
        if *port != 0 {
            let _ = writeln!(f, "ports = [{port}]");
        }
    }
    f
}

fuzz_target!(|d: &[u8]| {
    let Ok(text) = std::str::from_utf8(d) else {
        return;
    };
    match parse("fuzz.toml", text) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("fuzz.toml"), "error without its file: {e}");
        }
        Ok(s) => {
            let again = render(&s);
            match parse("again.toml", &again) {
                Ok(t) => assert_eq!(s, t, "settings changed through\n{again}"),
                Err(e) => panic!("settings written back are refused: {e}\n{again}"),
            }
        }
    }
});
