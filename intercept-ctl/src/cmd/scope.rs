use intercept_ctl::control::{Maps, Prefix, parse_ports};

use super::{Ctx, print_json, require_healthy};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Protect a destination prefix, on some ports or on all.
    ///
    /// Example: intercept-ctl scope add eth0 198.18.0.0/24 --ports 80,443
    Add(Entry),
    /// Stop protecting a destination prefix (on the given ports, or its all-ports entry).
    ///
    /// Example: intercept-ctl scope del eth0 198.18.0.0/24 --ports 443
    Del(Entry),
    /// List the protected destinations.
    ///
    /// Example: intercept-ctl scope list eth0 --json
    List(Iface),
}

#[derive(Debug, clap::Subcommand)]
pub enum ExemptCmd {
    /// Exempt a source prefix: its SYNs and ACKs always pass to the kernel.
    ///
    /// Example: intercept-ctl exempt add eth0 2001:db8:ffff::/48
    Add(Source),
    /// Remove an exempt source prefix.
    Del(Source),
    /// List exempt sources.
    List(Iface),
}

#[derive(Debug, clap::Args)]
pub struct Entry {
    /// Interface.
    pub iface: String,
    /// Destination prefix, IPv4 or IPv6 (a bare address means /32 or /128).
    pub prefix: Prefix,
    /// Ports (1-65535): a list and/or ranges, e.g. 80,443,8000-8010. Default: every port.
    #[arg(long, value_parser = |s: &str| parse_ports(s).map(Ports).map_err(|e| e.to_string()))]
    pub ports: Option<Ports>,
}

/// A parsed port list.
#[derive(Debug, Clone)]
pub struct Ports(pub Vec<u16>);

#[derive(Debug, clap::Args)]
pub struct Source {
    /// Interface.
    pub iface: String,
    /// Source prefix.
    pub prefix: Prefix,
}

#[derive(Debug, clap::Args)]
pub struct Iface {
    /// Interface.
    pub iface: String,
}

pub fn run(ctx: &Ctx, c: &Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Add(e) => {
            require_healthy(ctx, &e.iface)?;
            Maps::open(&e.iface, ctx.netns)?
                .scope_add(&e.prefix, e.ports.as_ref().map(|p| p.0.as_slice()))?;
            done(ctx, "added", e);
            Ok(())
        }
        Cmd::Del(e) => {
            require_healthy(ctx, &e.iface)?;
            Maps::open(&e.iface, ctx.netns)?
                .scope_del(&e.prefix, e.ports.as_ref().map(|p| p.0.as_slice()))?;
            done(ctx, "removed", e);
            Ok(())
        }
        Cmd::List(i) => {
            let l = Maps::open(&i.iface, ctx.netns)?.scope_list()?;
            if ctx.json {
                let v: Vec<_> = l.iter().map(|(p, port)| serde_json::json!({ "prefix": p.to_string(), "port": if *port == 0 { serde_json::Value::Null } else { (*port).into() } })).collect();
                print_json(&serde_json::json!({ "interface": i.iface, "scope": v }));
            } else {
                for (p, port) in l {
                    println!(
                        "{p} port {}",
                        if port == 0 {
                            "any".to_owned()
                        } else {
                            port.to_string()
                        }
                    );
                }
            }
            Ok(())
        }
    }
}

fn done(ctx: &Ctx, what: &str, e: &Entry) {
    let ports = e.ports.as_ref().map(|p| {
        p.0.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    if ctx.json {
        print_json(
            &serde_json::json!({ "interface": e.iface, what: e.prefix.to_string(), "ports": e.ports.as_ref().map(|p| &p.0) }),
        );
    } else {
        println!(
            "{what} {} port {} on {}",
            e.prefix,
            ports.unwrap_or_else(|| "any".into()),
            e.iface
        );
    }
}

pub fn run_exempt(ctx: &Ctx, c: &ExemptCmd) -> anyhow::Result<()> {
    match c {
        ExemptCmd::Add(s) | ExemptCmd::Del(s) => {
            require_healthy(ctx, &s.iface)?;
            let mut m = Maps::open(&s.iface, ctx.netns)?;
            let what = if matches!(c, ExemptCmd::Add(_)) {
                m.exempt_add(&s.prefix)?;
                "exempted"
            } else {
                m.exempt_del(&s.prefix)?;
                "unexempted"
            };
            if ctx.json {
                print_json(
                    &serde_json::json!({ "interface": s.iface, what: s.prefix.to_string() }),
                );
            } else {
                println!("{what} {} on {}", s.prefix, s.iface);
            }
        }
        ExemptCmd::List(i) => {
            let l = Maps::open(&i.iface, ctx.netns)?.exempt_list()?;
            if ctx.json {
                print_json(
                    &serde_json::json!({ "interface": i.iface, "exempt": l.iter().map(ToString::to_string).collect::<Vec<_>>() }),
                );
            } else {
                for p in l {
                    println!("{p}");
                }
            }
        }
    }
    Ok(())
}
