use intercept_common::config::{MSS_V4_RANGE, MSS_V6_RANGE, flags};
use intercept_ctl::control::Maps;

use super::{Ctx, print_json};

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
    /// MSS advertised in IPv4 SYN-ACKs (the server's; default MTU - 40).
    #[arg(long, value_parser = clap::value_parser!(u16).range(i64::from(*MSS_V4_RANGE.start())..=i64::from(*MSS_V4_RANGE.end())))]
    pub mss_v4: Option<u16>,
    /// MSS advertised in IPv6 SYN-ACKs (default MTU - 60).
    #[arg(long, value_parser = clap::value_parser!(u16).range(i64::from(*MSS_V6_RANGE.start())..=i64::from(*MSS_V6_RANGE.end())))]
    pub mss_v6: Option<u16>,
    /// Window field of the SYN-ACK (never scaled).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub window: Option<u16>,
    /// Window scale advertised, which becomes the connection's receive scale (RFC 7323: 0-14).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=14))]
    pub wscale: Option<u8>,
    /// TTL / hop limit of SYN-ACKs.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub ttl: Option<u8>,
    /// Answer ECN setup SYNs with ECE.
    #[arg(long, value_enum)]
    pub ecn: Option<OnOff>,
}

/// Shows or changes the SYN-ACK the cookie path sends (live). The client's MSS is encoded in the
/// cookie as an index into fixed tables (IPv4 536/1300/1440/1460, IPv6 1220/1420/1440/8940).
pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    let changes = a.mss_v4.is_some()
        || a.mss_v6.is_some()
        || a.window.is_some()
        || a.wscale.is_some()
        || a.ttl.is_some()
        || a.ecn.is_some();
    if changes {
        super::require_healthy(ctx, &a.iface)?;
    }
    let pins = intercept_ctl::pins::PinDir::new(ctx.netns, &a.iface);
    let kernel_cookie =
        intercept_ctl::engine::recorded(&pins) == intercept_ctl::engine::Engine::KernelCookie;
    if kernel_cookie && (a.wscale.is_some() || a.ecn == Some(OnOff::On)) {
        anyhow::bail!(
            "the kernel-cookie engine of {} advertises the window scale the kernel itself will \
             give the connection (from net.ipv4.tcp_rmem and net.core.rmem_max) and never \
             negotiates ECN: --wscale and --ecn on cannot apply (change those sysctls instead)",
            a.iface
        );
    }
    let mut m = Maps::open(&a.iface, ctx.netns)?;
    let c = m.update_config(|c| {
        c.mss_v4 = a.mss_v4.unwrap_or(c.mss_v4);
        c.mss_v6 = a.mss_v6.unwrap_or(c.mss_v6);
        c.window = a.window.unwrap_or(c.window);
        c.wscale = a.wscale.unwrap_or(c.wscale);
        c.ttl = a.ttl.unwrap_or(c.ttl);
        match a.ecn {
            Some(OnOff::On) => c.flags |= flags::ECN,
            Some(OnOff::Off) => c.flags &= !flags::ECN,
            None => {}
        }
    })?;
    let v = serde_json::json!({
        "interface": a.iface, "mss_v4": c.mss_v4, "mss_v6": c.mss_v6, "window": c.window,
        "wscale": c.wscale, "ttl": c.ttl, "ecn": c.flags & flags::ECN != 0 && !kernel_cookie,
    });
    if ctx.json {
        print_json(&v);
    } else {
        super::print_summary(&v);
    }
    Ok(())
}
