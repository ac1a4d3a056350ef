//! The real embedded object on crafted frames through BPF_PROG_TEST_RUN: verdict, output frame and
//! exact counter deltas for every fixture.
use intercept_common::{
    Counter::{self, *},
    craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
    maps::PROG_XDP,
    parse::{ETH_P_8021AD, ETH_P_8021Q, tcp_flags},
};
use intercept_tests::{Loaded, deltas, require_root};
use std::net::IpAddr;

const XDP_PASS: u32 = 2;

struct Fixture {
    what: String,
    frame: Vec<u8>,
    verdict: u32,
    counters: Vec<Counter>,
}

fn fx(what: &str, frame: Vec<u8>, extra: &[Counter]) -> Fixture {
    let mut counters = vec![Packets, Passed];
    counters.extend_from_slice(extra);
    Fixture {
        what: what.to_owned(),
        frame,
        verdict: XDP_PASS,
        counters,
    }
}

fn seg(v6: bool, flags: u8) -> TcpSegment {
    let (s, d): (IpAddr, IpAddr) = if v6 {
        (
            "2001:db8::2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        )
    } else {
        ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap())
    };
    let mut t = TcpSegment::new(s, d, 40000, 80, flags);
    t.seq = 1000;
    t
}

fn vlans(n: usize) -> Link {
    let tags = [(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)];
    Link {
        vlans: tags[2 - n..].to_vec(),
        ..Link::default()
    }
}

fn fixtures() -> Vec<Fixture> {
    let mut v = Vec::new();
    for v6 in [false, true] {
        let ip = if v6 { Ipv6 } else { Ipv4 };
        let fam = if v6 { "IPv6" } else { "IPv4" };
        for nv in 0..=2 {
            let link = vlans(nv);
            let mut tagged: Vec<Counter> = if nv > 0 { vec![Vlan] } else { vec![] };
            tagged.push(ip);
            let with = |extra: &[Counter]| [tagged.as_slice(), extra].concat();
            let mut syn = seg(v6, tcp_flags::SYN);
            syn.options = linux_syn_options(1460, 1, 7);
            v.push(fx(
                &format!("{fam} SYN, Linux options, {nv} VLAN"),
                tcp_frame(&link, &syn),
                &with(&[Tcp, Syn]),
            ));
            v.push(fx(
                &format!("{fam} bare SYN, {nv} VLAN"),
                tcp_frame(&link, &seg(v6, tcp_flags::SYN)),
                &with(&[Tcp, Syn]),
            ));
            v.push(fx(
                &format!("{fam} SYN-ACK, {nv} VLAN"),
                tcp_frame(&link, &seg(v6, tcp_flags::SYN | tcp_flags::ACK)),
                &with(&[Tcp, SynAck]),
            ));
            let mut data = seg(v6, tcp_flags::ACK | tcp_flags::PSH);
            data.payload = vec![0xab; 100];
            v.push(fx(
                &format!("{fam} ACK with data, {nv} VLAN"),
                tcp_frame(&link, &data),
                &with(&[Tcp, Ack]),
            ));
            v.push(fx(
                &format!("{fam} RST, {nv} VLAN"),
                tcp_frame(&link, &seg(v6, tcp_flags::RST | tcp_flags::ACK)),
                &with(&[Tcp, Rst]),
            ));
            v.push(fx(
                &format!("{fam} bare FIN, {nv} VLAN"),
                tcp_frame(&link, &seg(v6, tcp_flags::FIN)),
                &with(&[Tcp]),
            ));
        }
    }
    // Not TCP.
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    v.push(fx("ARP", arp, &[NonTcp]));
    let mut udp = tcp_frame(&Link::default(), &seg(false, tcp_flags::SYN));
    udp[23] = 17;
    v.push(fx("IPv4 UDP", udp, &[Ipv4, NonTcp]));
    let mut frag = tcp_frame(&Link::default(), &seg(false, tcp_flags::SYN));
    frag[20] = 0x20; // MF, offset 0: first fragment
    v.push(fx("IPv4 first fragment", frag, &[Ipv4, Fragment]));
    // Truncated at every header boundary (the kernel rejects frames under 14 bytes itself).
    let mut syn4 = seg(false, tcp_flags::SYN);
    syn4.options = linux_syn_options(1460, 1, 7);
    let full4 = tcp_frame(&vlans(1), &syn4);
    for (cut, what) in [
        (16, "inside the VLAN tag"),
        (18 + 19, "inside the IPv4 header"),
        (18 + 20 + 19, "inside the TCP header"),
        (18 + 20 + 30, "inside the TCP options"),
    ] {
        v.push(fx(
            &format!("IPv4 SYN cut {what} ({cut} bytes)"),
            full4[..cut].to_vec(),
            &[Malformed],
        ));
    }
    let mut syn6 = seg(true, tcp_flags::SYN);
    syn6.options = linux_syn_options(1440, 1, 7);
    let full6 = tcp_frame(&Link::default(), &syn6);
    for (cut, what) in [
        (14 + 39, "inside the IPv6 header"),
        (54 + 19, "inside the TCP header"),
        (54 + 39, "inside the TCP options"),
    ] {
        v.push(fx(
            &format!("IPv6 SYN cut {what} ({cut} bytes)"),
            full6[..cut].to_vec(),
            &[Malformed],
        ));
    }
    // Lying lengths.
    let good = tcp_frame(&Link::default(), &syn4);
    for (what, at, byte) in [
        ("IHL 4", 14, 0x44u8),
        ("IPv4 total length > frame", 16, 0x02),
        ("TCP doff 3", 46, 0x30),
        ("TCP doff 15 > IP payload", 46, 0xf0),
    ] {
        let mut f = good.clone();
        f[at] = byte;
        v.push(fx(&format!("IPv4 SYN with {what}"), f, &[Malformed]));
    }
    v
}

#[test]
fn every_fixture_gets_its_verdict_frame_and_counters() {
    require_root("every_fixture_gets_its_verdict_frame_and_counters");
    let obj = Loaded::new(&[PROG_XDP]);
    let all = fixtures();
    assert!(all.len() > 40, "fixture table shrank to {}", all.len());
    for f in all {
        let out = obj.run_expect(PROG_XDP, &f.what, &f.frame, f.verdict, &f.counters);
        assert_eq!(
            out, f.frame,
            "{}: a passed frame must leave unchanged",
            f.what
        );
    }
}

#[test]
fn frames_shorter_than_ethernet_are_refused_by_the_kernel() {
    require_root("frames_shorter_than_ethernet_are_refused_by_the_kernel");
    let obj = Loaded::new(&[PROG_XDP]);
    let before = obj.counters();
    assert!(
        obj.run(PROG_XDP, &[0u8; 13]).is_err(),
        "BPF_PROG_TEST_RUN accepted a 13-byte frame"
    );
    assert_eq!(
        deltas(&before, &obj.counters()),
        vec![],
        "a refused run counted something"
    );
}

#[test]
fn tc_handoff_loads_with_the_kfunc_resolved() {
    require_root("tc_handoff_loads_with_the_kfunc_resolved");
    let mut obj = intercept_ctl::loader::load_object().expect("load object");
    let p: &mut aya::programs::SchedClassifier = obj
        .program_mut(intercept_common::maps::PROG_TC)
        .expect("tc program")
        .try_into()
        .expect("classifier");
    p.load()
        .unwrap_or_else(|e| panic!("load tc_handoff: {e:?}"));
}

/// The verifier's budget: the kernel refuses a program past 1,000,000 processed instructions,
/// and the main program's cost grows with every branch of the data path. This fails well before
/// the limit, while there is room to restructure (e.g. move a loop under `bpf_loop`).
#[test]
fn verifier_cost_stays_below_its_budget() {
    require_root("verifier_cost_stays_below_its_budget");
    let obj = Loaded::new(&[PROG_XDP]);
    let p: &aya::programs::Xdp = obj
        .ebpf
        .program(PROG_XDP)
        .expect("program")
        .try_into()
        .expect("XDP");
    let n = p
        .info()
        .expect("program info")
        .verified_instruction_count()
        .expect("the kernel reports the verification cost");
    println!("{PROG_XDP}: {n} instructions processed by the verifier");
    assert!(
        n < 900_000,
        "{PROG_XDP} costs the verifier {n} of its 1,000,000 instructions: restructure before \
         adding more"
    );
}

/// The data path's log level is fixed at load, and a level turned off costs nothing: the
/// verifier, which sees the level (read-only data), walks none of the logging code and removes
/// it, so with the log off the main program costs it less and both it and the TC program are
/// smaller in the kernel than with the log at `warn`.
#[test]
fn a_log_level_turned_off_is_removed_by_the_verifier() {
    use intercept_ctl::datalog::LogLevel;
    require_root("a_log_level_turned_off_is_removed_by_the_verifier");
    // (instructions verified of the XDP program, bytes translated of the XDP and TC programs)
    let cost = |level| {
        let mut obj = intercept_ctl::loader::load_object_logging(level).expect("load object");
        let xdp: &mut aya::programs::Xdp = obj
            .program_mut(PROG_XDP)
            .expect("XDP program")
            .try_into()
            .expect("XDP");
        xdp.load().expect("load the XDP program");
        let info = xdp.info().expect("program info");
        let (verified, xdp_size) = (
            info.verified_instruction_count()
                .expect("verification cost"),
            info.size_translated().expect("translated size"),
        );
        let tc: &mut aya::programs::SchedClassifier = obj
            .program_mut(intercept_common::maps::PROG_TC)
            .expect("tc program")
            .try_into()
            .expect("classifier");
        tc.load().expect("load the TC program");
        let tc_size = tc
            .info()
            .expect("program info")
            .size_translated()
            .expect("translated size");
        (verified, xdp_size, tc_size)
    };
    let (off, on) = (cost(LogLevel::Off), cost(LogLevel::Warn));
    println!("log off: {off:?}; log at warn: {on:?} (verified, XDP bytes, TC bytes)");
    assert!(
        off.0 < on.0 && off.1 < on.1 && off.2 < on.2,
        "with the log off the verifier still walks or keeps logging code: off {off:?}, warn {on:?}"
    );
}

/// The object calls no out-of-line `memset`, `memmove` or `memcpy`: older verifiers (6.1) count
/// every call's frame, rounded up to 32 bytes, against the 512-byte stack of a call chain, and a
/// chain that fits on 6.18 is refused there. (LLVM emits such calls for plain struct copies and
/// zero fills of a few dozen bytes.)
#[test]
fn the_object_calls_no_out_of_line_mem_functions() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let elf = object::File::parse(intercept_ctl::EBPF_OBJECT).expect("the eBPF object is ELF");
    // Functions by (section, address).
    let mut names = std::collections::HashMap::new();
    for sym in elf.symbols() {
        if let (Some(sec), Ok(name)) = (sym.section_index(), sym.name()) {
            names.insert((sec, sym.address()), name.to_owned());
        }
    }
    let mut calls = Vec::new();
    for sec in elf.sections() {
        let Ok(code) = sec.data() else { continue };
        let imm_at = |off: usize| {
            code.get(off..off + 8)
                .filter(|i| i[0] == 0x85 && i[1] >> 4 == 1)
                .map(|i| i64::from(i32::from_le_bytes(i[4..8].try_into().expect("4 bytes"))))
        };
        // Calls the linker left relocated: against a function's symbol, or against its
        // section's symbol with the function's place in the immediate, counted in instructions
        // from the next one.
        let mut relocated = std::collections::HashSet::new();
        for (off, rel) in sec.relocations() {
            let (Ok(off), object::RelocationTarget::Symbol(idx)) =
                (usize::try_from(off), rel.target())
            else {
                continue;
            };
            let (Some(imm), Ok(sym)) = (imm_at(off), elf.symbol_by_index(idx)) else {
                continue;
            };
            relocated.insert(off);
            let Some(target_sec) = sym.section_index() else {
                calls.push(sym.name().unwrap_or_default().to_owned());
                continue;
            };
            let addr = if sym.kind() == object::SymbolKind::Section {
                u64::try_from((imm + 1) * 8).unwrap_or(u64::MAX)
            } else {
                sym.address()
            };
            if let Some(name) = names.get(&(target_sec, addr)) {
                calls.push(name.clone());
            }
        }
        // Calls resolved within the section: relative to the next instruction.
        for pc in 0..code.len() / 8 {
            let Some(imm) = imm_at(pc * 8).filter(|_| !relocated.contains(&(pc * 8))) else {
                continue;
            };
            if let Some(name) = u64::try_from((pc as i64 + 1 + imm) * 8)
                .ok()
                .and_then(|t| names.get(&(sec.index(), t)))
            {
                calls.push(name.clone());
            }
        }
    }
    // The walk finds calls: the main program's to its SYN and ACK paths at least.
    assert!(
        calls.iter().filter(|c| c.contains("handle")).count() >= 2,
        "the object's BPF-to-BPF calls were found: {calls:?}"
    );
    for name in ["memset", "memmove", "memcpy"] {
        assert!(
            !calls.iter().any(|c| c == name),
            "a program of the eBPF object calls `{name}`: some copy or fill became a call (see \
             CONTRIBUTING.md, the stack budget on 6.1)"
        );
    }
}
