//! Declares the kfunc `bpf_sk_assign_tcp_reqsk` in the object's BTF before aya loads it.
//!
//! aya resolves a kfunc call only if the object's BTF holds an extern FUNC for it in a `.ksyms`
//! DATASEC; rustc emits no debug info for `extern "C"` declarations, so the call's relocation
//! names a symbol the BTF lacks ("extern 'bpf_sk_assign_tcp_reqsk' not found"). This module
//! appends the missing types (three named structs, pointers to them, `int`, the FUNC_PROTO, the
//! extern FUNC and the DATASEC) to the `.BTF` section, rewriting only that section: the new BTF
//! goes at the end of the file and the section header points at it. Type ids already in the object
//! are unchanged, so `.BTF.ext` stays valid.
//!
//! Format: include/uapi/linux/btf.h (Documentation/bpf/btf.rst).
use anyhow::{Context as _, bail, ensure};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_DATASEC: u32 = 15;
/// `BTF_FUNC_EXTERN`.
const LINKAGE_EXTERN: u32 = 2;
/// `BTF_INT_SIGNED` in the encoding byte of an INT.
const INT_SIGNED: u32 = 1 << 24;

/// The kfunc we call and its parameters, as the kernel declares it.
pub const KFUNC: &str = "bpf_sk_assign_tcp_reqsk";
const PARAMS: [(&str, Option<&str>); 4] = [
    ("skb", Some("__sk_buff")),
    ("sk", Some("sock")),
    ("attrs", Some("bpf_tcp_req_attrs")),
    ("attrs__sz", None),
];

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The offsets of every type record in a BTF type section, in id order (ids run 1..=n).
fn type_offsets(types: &[u8]) -> anyhow::Result<Vec<usize>> {
    let (mut off, mut all) = (0usize, Vec::new());
    while off < types.len() {
        ensure!(off + 12 <= types.len(), "truncated BTF type at {off}");
        let info = u32_at(types, off + 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            k => bail!("unknown BTF kind {k}"),
        };
        all.push(off);
        off += 12 + extra;
    }
    Ok(all)
}

/// Number of types in a BTF type section.
fn count_types(types: &[u8]) -> anyhow::Result<u32> {
    Ok(u32::try_from(type_offsets(types)?.len())?)
}

/// A BTF blob's (type section, string section).
fn sections(btf: &[u8]) -> anyhow::Result<(&[u8], &[u8])> {
    ensure!(
        btf.len() >= 24 && u16_at(btf, 0) == BTF_MAGIC,
        "not a little-endian BTF blob"
    );
    let hdr_len = u32_at(btf, 4) as usize;
    let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
    let (str_off, str_len) = (u32_at(btf, 16) as usize, u32_at(btf, 20) as usize);
    let types = btf
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .context("BTF types out of range")?;
    let strings = btf
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .context("BTF strings out of range")?;
    Ok((types, strings))
}

/// The byte offset of member `member` in the struct named `strukt` of a (kernel) BTF blob: how
/// the data path finds fields of kernel structures it reads without CO-RE. A member of an
/// anonymous struct or union inside it counts as its own (`sock_common.skc_dport` lies in one:
/// `union { __portpair skc_portpair; struct { __be16 skc_dport; __u16 skc_num; }; }`).
///
/// # Errors
/// If the blob is not BTF, or has no such struct or member, or the member is a bitfield.
pub fn member_offset(btf: &[u8], strukt: &str, member: &str) -> anyhow::Result<u32> {
    member_offset_uncached(btf, strukt, member)
}

/// The running kernel's BTF (`/sys/kernel/btf/vmlinux`), read once per process: `status`,
/// `attach` and the probes ask it several things, and reading and scanning its megabytes each
/// time made a `status` take half a second.
#[must_use]
pub fn vmlinux() -> Option<&'static [u8]> {
    static VMLINUX: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    VMLINUX
        .get_or_init(|| std::fs::read("/sys/kernel/btf/vmlinux").ok())
        .as_deref()
}

/// Whether the kernel's BTF declares a function (a kfunc, a kernel function a tracing program
/// attaches to) named `name`: looked up by kind and name with aya's BTF parser, the BTF parsed
/// once per process.
#[must_use]
pub fn vmlinux_has_func(name: &str) -> bool {
    vmlinux_has(name, aya_obj::btf::BtfKind::Func)
}

/// Whether the kernel's BTF declares a struct named `name`.
#[must_use]
pub fn vmlinux_has_struct(name: &str) -> bool {
    vmlinux_has(name, aya_obj::btf::BtfKind::Struct)
}

fn vmlinux_has(name: &str, kind: aya_obj::btf::BtfKind) -> bool {
    static PARSED: std::sync::OnceLock<Option<aya::Btf>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| aya::Btf::from_sys_fs().ok())
        .as_ref()
        .is_some_and(|btf| btf.id_by_type_name_kind(name, kind).is_ok())
}

/// `member` of `strukt` in the running kernel's BTF: its bit offset and bitfield size (0: not a
/// bitfield), remembered per process.
fn vmlinux_member(strukt: &'static str, member: &'static str) -> Option<(u32, u32)> {
    type Members = std::collections::HashMap<(&'static str, &'static str), Option<(u32, u32)>>;
    static CACHE: std::sync::Mutex<Option<Members>> = std::sync::Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *cache
        .get_or_insert_with(Members::new)
        .entry((strukt, member))
        .or_insert_with(|| member_bits(vmlinux()?, strukt, member).ok())
}

/// [`member_offset`] in the running kernel's BTF, remembered per process.
#[must_use]
pub fn vmlinux_member_offset(strukt: &'static str, member: &'static str) -> Option<u32> {
    vmlinux_member(strukt, member)
        .filter(|&(bits, size)| size == 0 && bits % 8 == 0)
        .map(|(bits, _)| bits / 8)
}

/// The bit offset of `member` in `strukt` in the kernel's BTF, bitfields too.
#[must_use]
pub fn vmlinux_member_bits(strukt: &'static str, member: &'static str) -> Option<u32> {
    vmlinux_member(strukt, member).map(|(bits, _)| bits)
}

fn member_offset_uncached(btf: &[u8], strukt: &str, member: &str) -> anyhow::Result<u32> {
    let (bits, size) = member_bits(btf, strukt, member)?;
    ensure!(
        size == 0 && bits % 8 == 0,
        "{strukt}.{member} is a bitfield"
    );
    Ok(bits / 8)
}

/// The bit offset and bitfield size (0: not a bitfield) of `member` in `strukt`.
fn member_bits(btf: &[u8], strukt: &str, member: &str) -> anyhow::Result<(u32, u32)> {
    let (types, strings) = sections(btf)?;
    let name = |off: u32| -> &[u8] {
        let rest = strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let offsets = type_offsets(types)?;
    for &off in &offsets {
        let info = u32_at(types, off + 4);
        if (info >> 24) & 0x1f != KIND_STRUCT || name(u32_at(types, off)) != strukt.as_bytes() {
            continue;
        }
        return find_member(types, &offsets, &name, off, member, 0)
            .with_context(|| format!("struct {strukt} has no member {member}"));
    }
    bail!("no struct {strukt} in BTF")
}

/// The bit offset of `member` in the struct or union whose record is at `off` (plus `base`),
/// looking into its anonymous struct and union members, with its bitfield size (0: not a
/// bitfield); `None` if absent.
fn find_member<'s>(
    types: &[u8],
    offsets: &[usize],
    name: &dyn Fn(u32) -> &'s [u8],
    off: usize,
    member: &str,
    base: u32,
) -> Option<(u32, u32)> {
    let info = u32_at(types, off + 4);
    let bitfields = info & (1 << 31) != 0;
    for m in 0..(info & 0xffff) as usize {
        let at = off + 12 + 12 * m;
        let (bits, size) = if bitfields {
            let o = u32_at(types, at + 8);
            (o & 0x00ff_ffff, o >> 24)
        } else {
            (u32_at(types, at + 8), 0)
        };
        let member_name = u32_at(types, at);
        if member_name == 0 {
            // An anonymous struct or union: its members are the outer struct's.
            let ty = u32_at(types, at + 4) as usize;
            let inner = *offsets.get(ty.checked_sub(1)?)?;
            let kind = (u32_at(types, inner + 4) >> 24) & 0x1f;
            if (kind == KIND_STRUCT || kind == KIND_UNION)
                && let Some(found) = find_member(types, offsets, name, inner, member, base + bits)
            {
                return Some(found);
            }
        } else if name(member_name) == member.as_bytes() {
            return Some((base + bits, size));
        }
    }
    None
}

struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    str_base: u32,
    next_id: u32,
}

impl Builder {
    fn string(&mut self, s: &str) -> u32 {
        let off = self.str_base + u32::try_from(self.strings.len()).expect("small");
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }
    fn ty(&mut self, name: u32, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        for w in [name, kind << 24 | vlen, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }
}

/// Returns new BTF with the kfunc declared. `btf` is the object's `.BTF` section.
///
/// # Errors
/// If the section is not BTF this module understands.
pub fn declare_kfunc(btf: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (types, strings) = sections(btf)?;
    let (type_len, str_len) = (types.len(), strings.len());
    ensure!(
        !strings.windows(7).any(|w| w == b".ksyms\0"),
        "object already has a .ksyms section"
    );
    let mut b = Builder {
        types: Vec::new(),
        strings: Vec::new(),
        str_base: u32::try_from(str_len)?,
        next_id: count_types(types)? + 1,
    };
    let int_name = b.string("int");
    let int = b.ty(int_name, KIND_INT, 0, 4, &[INT_SIGNED | 32]);
    let mut params = Vec::new();
    for (pname, strukt) in PARAMS {
        let ty = match strukt {
            Some(s) => {
                let sn = b.string(s);
                let st = b.ty(sn, KIND_STRUCT, 0, 0, &[]);
                b.ty(0, KIND_PTR, 0, st, &[])
            }
            None => int,
        };
        let pn = b.string(pname);
        params.extend([pn, ty]);
    }
    let proto = b.ty(
        0,
        KIND_FUNC_PROTO,
        u32::try_from(PARAMS.len())?,
        int,
        &params,
    );
    let fname = b.string(KFUNC);
    let func = b.ty(fname, KIND_FUNC, LINKAGE_EXTERN, proto, &[]);
    let sec = b.string(".ksyms");
    b.ty(sec, KIND_DATASEC, 1, 0, &[func, 0, 0]);

    let new_type_len = type_len + b.types.len();
    let new_str_len = str_len + b.strings.len();
    let mut out = Vec::with_capacity(24 + new_type_len + new_str_len);
    out.extend_from_slice(&btf[..4]); // magic, version, flags
    for w in [
        24u32,
        0,
        u32::try_from(new_type_len)?,
        u32::try_from(new_type_len)?,
        u32::try_from(new_str_len)?,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(&b.types);
    out.extend_from_slice(strings);
    out.extend_from_slice(&b.strings);
    Ok(out)
}

/// Returns a copy of the ELF object whose `.BTF` section declares the kfunc (see module docs).
/// Objects that do not call the kfunc are returned unchanged.
///
/// On a kernel without the kfunc (`kernel_has_kfunc` false) its symbol is also made weak
/// (`STB_WEAK`): aya then loads the object and poisons the one call instead of refusing the
/// whole object ("kernel function not found"), and the program that makes it (the TC handoff)
/// is never loaded there. Everything else in the object works on such a kernel.
///
/// # Errors
/// If the object is not a 64-bit little-endian ELF with a `.BTF` section.
pub fn patch_object(elf: &[u8], kernel_has_kfunc: bool) -> anyhow::Result<Vec<u8>> {
    let mut out = declare_in_object(elf)?;
    if !kernel_has_kfunc && let Some(at) = kfunc_symbol(&out)? {
        // st_info: binding in the high nibble, type in the low one.
        out[at + 4] = STB_WEAK << 4 | (out[at + 4] & 0xf);
    }
    Ok(out)
}

/// `STB_WEAK`, the ELF symbol binding of a weak symbol.
const STB_WEAK: u8 = 2;
/// `SHT_SYMTAB`.
const SHT_SYMTAB: u32 = 2;

/// Where the undefined symbol of the kfunc sits in the object's `.symtab` (its `Elf64_Sym`).
fn kfunc_symbol(elf: &[u8]) -> anyhow::Result<Option<usize>> {
    let shoff = usize::try_from(u64_at(elf, 0x28))?;
    let (shentsize, shnum) = (
        usize::from(u16_at(elf, 0x3a)),
        usize::from(u16_at(elf, 0x3c)),
    );
    let sh = |i: usize| shoff + i * shentsize;
    let Some(symtab) = (0..shnum).find(|&i| u32_at(elf, sh(i) + 4) == SHT_SYMTAB) else {
        return Ok(None);
    };
    let strtab = u32_at(elf, sh(symtab) + 40) as usize;
    let str_off = usize::try_from(u64_at(elf, sh(strtab) + 24))?;
    let (off, size) = (
        usize::try_from(u64_at(elf, sh(symtab) + 24))?,
        usize::try_from(u64_at(elf, sh(symtab) + 32))?,
    );
    for at in (off..off + size).step_by(24) {
        let name = str_off + u32_at(elf, at) as usize;
        let undefined = u16_at(elf, at + 6) == 0;
        if undefined
            && elf
                .get(name..name + KFUNC.len() + 1)
                .is_some_and(|n| &n[..KFUNC.len()] == KFUNC.as_bytes() && n[KFUNC.len()] == 0)
        {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// The ELF binding of the kfunc's symbol in `elf` (`None`: the object does not call it).
///
/// # Errors
/// A malformed object.
pub fn kfunc_binding(elf: &[u8]) -> anyhow::Result<Option<u8>> {
    Ok(kfunc_symbol(elf)?.map(|at| elf[at + 4] >> 4))
}

fn declare_in_object(elf: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF"
    );
    if !elf.windows(KFUNC.len()).any(|w| w == KFUNC.as_bytes()) {
        return Ok(elf.to_vec());
    }
    let shoff = usize::try_from(u64_at(elf, 0x28))?;
    let (shentsize, shnum, shstrndx) = (
        usize::from(u16_at(elf, 0x3a)),
        usize::from(u16_at(elf, 0x3c)),
        usize::from(u16_at(elf, 0x3e)),
    );
    let sh = |i: usize| shoff + i * shentsize;
    let strtab_off = usize::try_from(u64_at(elf, sh(shstrndx) + 24))?;
    let name_of = |i: usize| -> &[u8] {
        let start = strtab_off + u32_at(elf, sh(i)) as usize;
        let end = elf[start..]
            .iter()
            .position(|&c| c == 0)
            .map_or(start, |p| start + p);
        &elf[start..end]
    };
    let btf_idx = (0..shnum)
        .find(|&i| name_of(i) == b".BTF")
        .context("object has no .BTF section (built without --btf?)")?;
    let (off, size) = (
        usize::try_from(u64_at(elf, sh(btf_idx) + 24))?,
        usize::try_from(u64_at(elf, sh(btf_idx) + 32))?,
    );
    let new_btf = declare_kfunc(elf.get(off..off + size).context(".BTF out of range")?)?;
    let mut out = elf.to_vec();
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let new_off = out.len() as u64;
    out.extend_from_slice(&new_btf);
    out[sh(btf_idx) + 24..sh(btf_idx) + 32].copy_from_slice(&new_off.to_le_bytes());
    out[sh(btf_idx) + 32..sh(btf_idx) + 40].copy_from_slice(&(new_btf.len() as u64).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kfunc_is_weak_only_where_the_kernel_lacks_it() {
        let strong = patch_object(crate::EBPF_OBJECT, true).expect("patch");
        assert_eq!(
            kfunc_binding(&strong).expect("parse"),
            Some(1),
            "STB_GLOBAL"
        );
        let weak = patch_object(crate::EBPF_OBJECT, false).expect("patch");
        assert_eq!(kfunc_binding(&weak).expect("parse"), Some(STB_WEAK));
    }

    /// A BTF blob holding `struct sock { int a; int b:3; int sk_ack_backlog; }` (b a bitfield of
    /// a struct with kind_flag set) and `struct plain { int x; int y; }`.
    fn tiny_btf() -> Vec<u8> {
        let mut b = Builder {
            types: Vec::new(),
            strings: vec![0],
            str_base: 0,
            next_id: 1,
        };
        let int_name = b.string("int");
        let int = b.ty(int_name, KIND_INT, 0, 4, &[INT_SIGNED | 32]);
        let (sock, a, bf, backlog) = (
            b.string("sock"),
            b.string("a"),
            b.string("b"),
            b.string("sk_ack_backlog"),
        );
        b.types.extend(
            [
                sock,
                1 << 31 | KIND_STRUCT << 24 | 3,
                12,
                a,
                int,
                0,
                bf,
                int,
                3 << 24 | 32,
                backlog,
                int,
                64,
            ]
            .iter()
            .flat_map(|w| w.to_le_bytes()),
        );
        let (plain, x, y) = (b.string("plain"), b.string("x"), b.string("y"));
        b.types.extend(
            [plain, KIND_STRUCT << 24 | 2, 8, x, int, 0, y, int, 32]
                .iter()
                .flat_map(|w| w.to_le_bytes()),
        );
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let (tl, sl) = (
            u32::try_from(b.types.len()).unwrap(),
            u32::try_from(b.strings.len()).unwrap(),
        );
        for w in [24u32, 0, tl, tl, sl] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&b.types);
        out.extend_from_slice(&b.strings);
        out
    }

    #[test]
    fn member_offsets_from_btf() {
        let btf = tiny_btf();
        assert_eq!(member_offset(&btf, "sock", "a").unwrap(), 0);
        assert_eq!(member_offset(&btf, "sock", "sk_ack_backlog").unwrap(), 8);
        assert_eq!(member_offset(&btf, "plain", "y").unwrap(), 4);
        assert!(member_offset(&btf, "sock", "b").is_err(), "a bitfield");
        assert!(member_offset(&btf, "sock", "nope").is_err());
        assert!(member_offset(&btf, "nope", "a").is_err());
        assert!(member_offset(&btf[..20], "sock", "a").is_err(), "truncated");
        // This machine's kernel: the two words the TC program reads lie side by side in struct
        // sock, 4 bytes each (a layout change fails here, not in the data path).
        let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let lo = member_offset(&vmlinux, "sock", "sk_ack_backlog").unwrap();
        let hi = member_offset(&vmlinux, "sock", "sk_max_ack_backlog").unwrap();
        assert!(lo > 0 && hi > 0 && lo != hi, "{lo} {hi}");
        // Members of anonymous unions and structs (the ports), and the socket fields the
        // tracing programs read, where include/net/sock.h puts them.
        let at = |s, m| member_offset(&vmlinux, s, m).unwrap();
        assert_eq!(at("sock_common", "skc_daddr"), 0);
        assert_eq!(at("sock_common", "skc_dport"), 12);
        assert_eq!(at("sock_common", "skc_num"), 14);
        assert!(at("sock_common", "skc_net") > 16);
        assert_eq!(
            at("sock_common", "skc_v6_rcv_saddr"),
            at("sock_common", "skc_v6_daddr") + 16
        );
        assert!(at("net", "net_cookie") > 0);
    }

    /// The embedded object's BTF, patched: every original type is still there with its id, and the
    /// new types follow with the shapes aya expects.
    #[test]
    fn patched_object_declares_the_kfunc() {
        let patched = patch_object(crate::EBPF_OBJECT, true).expect("patch");
        assert!(patched.len() > crate::EBPF_OBJECT.len());
        // Re-read the .BTF section from the patched ELF and check its tail.
        let shoff = u64_at(&patched, 0x28) as usize;
        let (ent, num, strndx) = (
            u16_at(&patched, 0x3a) as usize,
            u16_at(&patched, 0x3c) as usize,
            u16_at(&patched, 0x3e) as usize,
        );
        let stroff = u64_at(&patched, shoff + strndx * ent + 24) as usize;
        let idx = (0..num)
            .find(|i| {
                patched[stroff + u32_at(&patched, shoff + i * ent) as usize..]
                    .starts_with(b".BTF\0")
            })
            .expect(".BTF");
        let off = u64_at(&patched, shoff + idx * ent + 24) as usize;
        let size = u64_at(&patched, shoff + idx * ent + 32) as usize;
        let btf = &patched[off..off + size];
        let types = &btf[24..24 + u32_at(btf, 12) as usize];
        let strings = &btf[24 + u32_at(btf, 16) as usize..];
        assert!(
            strings
                .windows(KFUNC.len() + 1)
                .any(|w| &w[..KFUNC.len()] == KFUNC.as_bytes() && w[KFUNC.len()] == 0)
        );
        let n = count_types(types).unwrap();
        // Walk to the last type: the DATASEC with one entry pointing at the FUNC (id n - 1).
        let last = types.len() - 24;
        assert_eq!(u32_at(types, last + 4), KIND_DATASEC << 24 | 1);
        assert_eq!(u32_at(types, last + 12), n - 1, "DATASEC entry -> FUNC");
        let func = last - 12;
        assert_eq!(u32_at(types, func + 4), KIND_FUNC << 24 | LINKAGE_EXTERN);
        // The original types are untouched.
        let original = patch_object(crate::EBPF_OBJECT, true).unwrap();
        assert_eq!(original, patched, "patching is deterministic");
        assert!(
            declare_kfunc(btf).is_err(),
            "a second patch is refused, not duplicated"
        );
    }
}
