//! `ppn-sdf`: checks a Microkit system description (SDF) against the node image's layout.
//!
//! The layout (`ppn-layout`, `components/layout`) is the one source of truth: the PD code takes
//! its channel ids, addresses and sizes from it. The SDF (`sdf/qemu_virt_aarch64.system`) is
//! written by hand for Microkit, and [`check`] holds it to the layout. It fails, naming the
//! offending element and its line, on:
//!
//! - a secret region mapped into a PD other than the one the layout gives it to
//!   ([`SdfError::SecretShared`]);
//! - a channel the code uses that the SDF lacks ([`SdfError::MissingChannel`]) or an SDF channel
//!   the code does not use ([`SdfError::UnexpectedChannel`]);
//! - overlapping mappings in one PD ([`SdfError::Overlap`]);
//! - a device's registers, DMA memory, interrupt or DMA address given to a PD that does not
//!   drive it ([`SdfError::NotDriver`]);
//! - a PD or region the layout does not know, one it has that the SDF lacks, and any value that
//!   differs from the layout: sizes, physical and virtual addresses, permissions, caching,
//!   priorities, channel ids, interrupt numbers ([`SdfError::Mismatch`] and friends);
//! - an element or attribute outside the part of Microkit 2.3.0's SDF format that the layout
//!   describes, a value Microkit would refuse, and malformed XML (with its position).
//!
//! Every error is reported, sorted by line; [`check`] never panics, whatever its input.

use ppn_layout as layout;
use roxmltree::{Document, Node};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where an error is: the file, the line, and the element, written like `<map mr="ledger_state">`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: u32,
    pub element: String,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.element)
    }
}

/// One way an SDF can disagree with the layout or with Microkit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdfError {
    /// Not well-formed XML (or not UTF-8).
    #[error("{file}:{line}: malformed XML at column {column}: {message}")]
    Malformed { file: String, line: u32, column: u32, message: String },
    /// An element the layout's SDF has no place for here.
    #[error("{at} is not an element the layout describes here (expected {expected})")]
    UnknownElement { at: At, expected: &'static str },
    /// An attribute the layout's SDF has no place for on this element.
    #[error("{at} has attribute {attribute}, which the layout does not describe (allowed: {allowed})")]
    UnknownAttribute { at: At, attribute: String, allowed: String },
    /// A required attribute is absent.
    #[error("{at} lacks attribute {attribute}")]
    MissingAttribute { at: At, attribute: &'static str },
    /// A value Microkit would refuse (or could not read).
    #[error("{at} has {attribute}=\"{value}\": {reason}")]
    BadValue { at: At, attribute: &'static str, value: String, reason: &'static str },
    /// Text where Microkit allows only elements and comments.
    #[error("{at} contains text {text:?}; only elements and comments belong there")]
    UnexpectedText { at: At, text: String },
    /// A malformed construct, such as a channel without exactly two ends.
    #[error("{at} {problem}")]
    Structure { at: At, problem: String },
    /// A protection domain the layout does not know.
    #[error("{at} names protection domain {name}, which the layout does not know (it knows {known})")]
    UnknownPd { at: At, name: String, known: String },
    /// A memory region the layout does not know.
    #[error("{at} names memory region {name}, which the layout does not know")]
    UnknownRegion { at: At, name: String },
    /// A name the layout knows but this SDF does not declare.
    #[error("{at} names {what} {name}, which this SDF does not declare")]
    Undeclared { at: At, what: &'static str, name: String },
    /// Something declared twice.
    #[error("{at} repeats {what}, first at line {first_line}")]
    Duplicate { at: At, what: String, first_line: u32 },
    /// A channel id used twice in one PD (channels and interrupts share the id space).
    #[error("{at} uses channel id {id} in {pd} again, first at line {first_line}")]
    DuplicateId { at: At, pd: String, id: u64, first_line: u32 },
    /// Something the layout has that the SDF lacks (a PD, a region, a mapping, an interrupt...).
    #[error("{at} lacks {what}, which the layout has")]
    Missing { at: At, what: String },
    /// A value that differs from the layout's.
    #[error("{at} has {what} {found}; the layout says {expected}")]
    Mismatch { at: At, what: String, found: String, expected: String },
    /// A secret region mapped into a PD other than its owner.
    #[error("{at} maps secret region {region} into {pd}; it may only be mapped into {owner}")]
    SecretShared { at: At, region: String, pd: String, owner: String },
    /// A device's region, interrupt or DMA address given to a PD that does not drive it.
    #[error("{at} gives {what} of device {device} to {pd}; only its driver {driver} may have it")]
    NotDriver { at: At, what: String, device: String, pd: String, driver: String },
    /// Two mappings overlap in one PD.
    #[error(
        "{at} maps {region} at [{start:#x}..{end:#x}) in {pd}, overlapping {other} \
         [{other_start:#x}..{other_end:#x}) mapped at line {other_line}"
    )]
    Overlap {
        at: At,
        pd: String,
        region: String,
        start: u64,
        end: u64,
        other: String,
        other_start: u64,
        other_end: u64,
        other_line: u32,
    },
    /// A mapping, interrupt or setvar the layout does not have.
    #[error("{at} gives {pd} {what}, which the layout does not")]
    Unexpected { at: At, pd: String, what: String },
    /// A channel the code does not use.
    #[error("{at} is a channel between {a} and {b} that the code does not use")]
    UnexpectedChannel { at: At, a: String, b: String },
    /// A channel the code uses that the SDF lacks.
    #[error("{at} lacks the channel between {a} (id {a_id}) and {b} (id {b_id}) that the code uses: {purpose}")]
    MissingChannel { at: At, a: String, a_id: u8, b: String, b_id: u8, purpose: &'static str },
}

impl SdfError {
    /// A stable, snake_case name of the error's kind (for `--json` and tests).
    pub fn kind(&self) -> &'static str {
        match self {
            SdfError::Malformed { .. } => "malformed",
            SdfError::UnknownElement { .. } => "unknown_element",
            SdfError::UnknownAttribute { .. } => "unknown_attribute",
            SdfError::MissingAttribute { .. } => "missing_attribute",
            SdfError::BadValue { .. } => "bad_value",
            SdfError::UnexpectedText { .. } => "unexpected_text",
            SdfError::Structure { .. } => "structure",
            SdfError::UnknownPd { .. } => "unknown_pd",
            SdfError::UnknownRegion { .. } => "unknown_region",
            SdfError::Undeclared { .. } => "undeclared",
            SdfError::Duplicate { .. } => "duplicate",
            SdfError::DuplicateId { .. } => "duplicate_id",
            SdfError::Missing { .. } => "missing",
            SdfError::Mismatch { .. } => "mismatch",
            SdfError::SecretShared { .. } => "secret_shared",
            SdfError::NotDriver { .. } => "not_driver",
            SdfError::Overlap { .. } => "overlap",
            SdfError::Unexpected { .. } => "unexpected",
            SdfError::UnexpectedChannel { .. } => "unexpected_channel",
            SdfError::MissingChannel { .. } => "missing_channel",
        }
    }

    /// Where the error is.
    pub fn at(&self) -> Option<&At> {
        match self {
            SdfError::Malformed { .. } => None,
            SdfError::UnknownElement { at, .. }
            | SdfError::UnknownAttribute { at, .. }
            | SdfError::MissingAttribute { at, .. }
            | SdfError::BadValue { at, .. }
            | SdfError::UnexpectedText { at, .. }
            | SdfError::Structure { at, .. }
            | SdfError::UnknownPd { at, .. }
            | SdfError::UnknownRegion { at, .. }
            | SdfError::Undeclared { at, .. }
            | SdfError::Duplicate { at, .. }
            | SdfError::DuplicateId { at, .. }
            | SdfError::Missing { at, .. }
            | SdfError::Mismatch { at, .. }
            | SdfError::SecretShared { at, .. }
            | SdfError::NotDriver { at, .. }
            | SdfError::Overlap { at, .. }
            | SdfError::Unexpected { at, .. }
            | SdfError::UnexpectedChannel { at, .. }
            | SdfError::MissingChannel { at, .. } => Some(at),
        }
    }

    /// The line the error is on (1-based).
    pub fn line(&self) -> u32 {
        match self {
            SdfError::Malformed { line, .. } => *line,
            other => other.at().map_or(0, |at| at.line),
        }
    }

    /// The offending element, written like `<map mr="ledger_state">` (empty for malformed XML).
    pub fn element(&self) -> &str {
        self.at().map_or("", |at| at.element.as_str())
    }
}

/// What a passing SDF holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub pds: usize,
    pub regions: usize,
    pub maps: usize,
    pub channels: usize,
    pub irqs: usize,
    pub setvars: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = [
            (self.pds, "protection domain"),
            (self.regions, "memory region"),
            (self.maps, "mapping"),
            (self.channels, "channel"),
            (self.irqs, "interrupt"),
            (self.setvars, "setvar"),
        ];
        for (i, (n, what)) in counts.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let s = if n == 1 { "" } else { "s" };
            write!(f, "{sep}{n} {what}{s}")?;
        }
        Ok(())
    }
}

/// Checks an SDF given as bytes (it must be UTF-8). `file` is how errors name it.
pub fn check_bytes(file: &str, bytes: &[u8]) -> Result<Summary, Vec<SdfError>> {
    match std::str::from_utf8(bytes) {
        Ok(text) => check(file, text),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = 1 + good.iter().filter(|b| **b == b'\n').count();
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = 1 + String::from_utf8_lossy(&good[line_start..]).chars().count();
            Err(vec![SdfError::Malformed {
                file: file.to_owned(),
                line: to_u32(line),
                column: to_u32(column),
                message: format!("not UTF-8 (byte {})", e.valid_up_to()),
            }])
        }
    }
}

/// Checks the SDF `text` against the layout. `file` is how errors name it. On failure, every
/// error found, sorted by line.
pub fn check(file: &str, text: &str) -> Result<Summary, Vec<SdfError>> {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let pos = e.pos();
            return Err(vec![SdfError::Malformed {
                file: file.to_owned(),
                line: pos.row,
                column: pos.col,
                message: e.to_string(),
            }]);
        }
    };
    let mut checker =
        Checker { file, doc: &doc, errors: Vec::new(), summary: Summary::default(), ids: BTreeMap::new() };
    checker.system();
    let mut errors = checker.errors;
    if errors.is_empty() {
        Ok(checker.summary)
    } else {
        errors.sort_by_key(SdfError::line);
        Err(errors)
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Microkit 2.3.0's number syntax for sizes and addresses: underscores are dropped, then `0x`
/// and hex digits, or decimal digits.
fn parse_number(s: &str) -> Option<u64> {
    let digits: String = s.chars().filter(|c| *c != '_').collect();
    match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A mapping as the SDF has it, for the overlap check.
struct SdfMap {
    region: String,
    start: u64,
    end: u64,
    line: u32,
    at: At,
}

/// A declared memory region: its line and the size the SDF gives it.
struct SdfRegion {
    line: u32,
    size: Option<u64>,
}

struct Checker<'a, 'input> {
    file: &'a str,
    doc: &'a Document<'input>,
    errors: Vec<SdfError>,
    summary: Summary,
    /// Per PD, the channel ids in use and the line and byte offset of their first use.
    ids: BTreeMap<String, BTreeMap<u64, (u32, usize)>>,
}

const SYSTEM_CHILDREN: &str = "memory_region, protection_domain or channel";
const PD_CHILDREN: &str = "program_image, map, irq or setvar";

impl Checker<'_, '_> {
    fn line(&self, node: Node) -> u32 {
        self.doc.text_pos_at(node.range().start).row
    }

    fn at(&self, node: Node) -> At {
        let tag = node.tag_name().name();
        let keys: &[&str] = match tag {
            "memory_region" | "protection_domain" => &["name"],
            "map" => &["mr"],
            "irq" => &["irq"],
            "setvar" => &["symbol"],
            "end" => &["pd", "id"],
            "program_image" => &["path"],
            _ => &[],
        };
        let mut element = format!("<{tag}");
        for key in keys {
            if let Some(v) = node.attribute(*key) {
                element.push_str(&format!(" {key}=\"{v}\""));
            }
        }
        element.push('>');
        At { file: self.file.to_owned(), line: self.line(node), element }
    }

    fn push(&mut self, e: SdfError) {
        self.errors.push(e);
    }

    /// Reports every attribute of `node` not in `allowed`.
    fn attributes(&mut self, node: Node, allowed: &[&str]) {
        for a in node.attributes() {
            if !allowed.contains(&a.name()) || a.namespace().is_some() {
                let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
                self.push(SdfError::UnknownAttribute { at: self.at(node), attribute: a.name().to_owned(), allowed });
            }
        }
    }

    /// Reports non-blank text directly inside `node`.
    fn no_text(&mut self, node: Node) {
        for child in node.children() {
            if let Some(text) = child.text().filter(|t| child.is_text() && !t.trim().is_empty()) {
                self.push(SdfError::UnexpectedText { at: self.at(node), text: text.trim().to_owned() });
            }
        }
    }

    fn required<'n, 'i>(&mut self, node: Node<'n, 'i>, attribute: &'static str) -> Option<&'n str> {
        let v = node.attribute(attribute);
        if v.is_none() {
            self.push(SdfError::MissingAttribute { at: self.at(node), attribute });
        }
        v
    }

    fn bad(&mut self, node: Node, attribute: &'static str, value: &str, reason: &'static str) {
        self.push(SdfError::BadValue { at: self.at(node), attribute, value: value.to_owned(), reason });
    }

    /// A size or address: `Some(None)` if absent, `None` if present but unreadable (reported).
    fn number(&mut self, node: Node, attribute: &'static str) -> Option<Option<u64>> {
        match node.attribute(attribute) {
            None => Some(None),
            Some(v) => match parse_number(v) {
                Some(n) => Some(Some(n)),
                None => {
                    self.bad(node, attribute, v, "not a number (decimal, or 0x and hex digits; _ allowed)");
                    None
                }
            },
        }
    }

    /// A channel id: Microkit 2.3.0 reads it as a plain decimal and allows 0..=61.
    fn channel_id(&mut self, node: Node, attribute: &'static str) -> Option<u64> {
        let v = node.attribute(attribute)?;
        match v.parse::<i64>() {
            Ok(n) if (0..=i64::from(layout::MAX_CHANNEL_ID)).contains(&n) => u64::try_from(n).ok(),
            Ok(_) => {
                self.bad(node, attribute, v, "channel ids are 0..=61 per PD in Microkit 2.3.0");
                None
            }
            Err(_) => {
                self.bad(node, attribute, v, "not a decimal integer (Microkit reads channel ids as decimals)");
                None
            }
        }
    }

    /// A boolean attribute with its default.
    fn boolean(&mut self, node: Node, attribute: &'static str, default: bool) -> Option<bool> {
        match node.attribute(attribute) {
            None => Some(default),
            Some(v) => {
                let b = parse_bool(v);
                if b.is_none() {
                    self.bad(node, attribute, v, "must be true or false");
                }
                b
            }
        }
    }

    /// Records channel id `id` as used by `pd` at `node`; reports a repeat.
    fn use_id(&mut self, pd: &str, id: u64, node: Node) {
        let here = (self.line(node), node.range().start);
        let (first_line, first_at) = *self.ids.entry(pd.to_owned()).or_default().entry(id).or_insert(here);
        if first_at != here.1 {
            self.push(SdfError::DuplicateId { at: self.at(node), pd: pd.to_owned(), id, first_line });
        }
    }

    fn mismatch(&mut self, node: Node, what: impl Into<String>, found: impl fmt::Display, expected: impl fmt::Display) {
        self.push(SdfError::Mismatch {
            at: self.at(node),
            what: what.into(),
            found: found.to_string(),
            expected: expected.to_string(),
        });
    }

    fn system(&mut self) {
        let root = self.doc.root_element();
        if root.tag_name().name() != "system" || root.tag_name().namespace().is_some() {
            self.push(SdfError::UnknownElement { at: self.at(root), expected: "<system> as the root element" });
            return;
        }
        self.attributes(root, &[]);
        self.no_text(root);
        let elements: Vec<Node> = root.children().filter(Node::is_element).collect();

        // Regions first: a map may name a region declared further down.
        let mut regions: BTreeMap<String, SdfRegion> = BTreeMap::new();
        for node in elements.iter().filter(|n| n.tag_name().name() == "memory_region") {
            self.memory_region(*node, &mut regions);
        }

        let mut pds: BTreeMap<String, u32> = BTreeMap::new();
        for node in elements.iter().filter(|n| n.tag_name().name() == "protection_domain") {
            if let Some(name) = node.attribute("name") {
                let line = self.line(*node);
                pds.entry(name.to_owned()).or_insert(line);
            }
        }

        let mut channels_seen: BTreeMap<[&'static str; 2], u32> = BTreeMap::new();
        let mut pds_checked = BTreeSet::new();
        for node in elements {
            match node.tag_name().name() {
                "memory_region" if node.tag_name().namespace().is_none() => {}
                "protection_domain" if node.tag_name().namespace().is_none() => {
                    self.protection_domain(node, &regions, &mut pds_checked)
                }
                "channel" if node.tag_name().namespace().is_none() => self.channel(node, &pds, &mut channels_seen),
                _ => self.push(SdfError::UnknownElement { at: self.at(node), expected: SYSTEM_CHILDREN }),
            }
        }

        for pd in layout::PDS {
            if !pds.contains_key(pd.name) {
                self.push(SdfError::Missing { at: self.at(root), what: format!("protection domain {}", pd.name) });
            }
        }
        for r in layout::REGIONS {
            if !regions.contains_key(r.name) {
                self.push(SdfError::Missing { at: self.at(root), what: format!("memory region {}", r.name) });
            }
        }
        for c in layout::CHANNELS {
            let mut pair = [c.a.pd.name, c.b.pd.name];
            pair.sort();
            if !channels_seen.contains_key(&pair) {
                self.push(SdfError::MissingChannel {
                    at: self.at(root),
                    a: c.a.pd.name.to_owned(),
                    a_id: c.a.id,
                    b: c.b.pd.name.to_owned(),
                    b_id: c.b.id,
                    purpose: c.purpose,
                });
            }
        }
    }

    fn memory_region(&mut self, node: Node, regions: &mut BTreeMap<String, SdfRegion>) {
        self.attributes(node, &["name", "size", "phys_addr"]);
        self.no_text(node);
        self.no_children(node, "nothing");
        let Some(name) = self.required(node, "name") else { return };
        let line = self.line(node);
        if let Some(first) = regions.get(name) {
            let what = format!("memory region {name}");
            self.push(SdfError::Duplicate { at: self.at(node), what, first_line: first.line });
            return;
        }
        self.summary.regions += 1;
        let size = match self.required(node, "size") {
            Some(_) => self.number(node, "size").flatten(),
            None => None,
        };
        let phys = self.number(node, "phys_addr");
        regions.insert(name.to_owned(), SdfRegion { line, size });
        if let Some(size) = size
            && (size == 0 || !size.is_multiple_of(layout::PAGE_SIZE))
        {
            self.bad(node, "size", node.attribute("size").unwrap_or(""), "not a positive multiple of the 4 KiB page");
        }
        let Some(r) = layout::region(name) else {
            self.push(SdfError::UnknownRegion { at: self.at(node), name: name.to_owned() });
            return;
        };
        if let Some(size) = size
            && size != r.size
        {
            self.mismatch(node, "size", format_args!("{size:#x}"), format_args!("{:#x}", r.size));
        }
        if let Some(phys) = phys
            && phys != r.phys_addr()
        {
            let show = |p: Option<u64>| p.map_or_else(|| "none (placed by the tool)".to_owned(), |p| format!("{p:#x}"));
            self.mismatch(node, "phys_addr", show(phys), show(r.phys_addr()));
        }
    }

    /// Reports any child element of a node that should have none.
    fn no_children(&mut self, node: Node, expected: &'static str) {
        for child in node.children().filter(Node::is_element) {
            self.push(SdfError::UnknownElement { at: self.at(child), expected });
        }
    }

    fn protection_domain<'n>(
        &mut self,
        node: Node<'n, '_>,
        regions: &BTreeMap<String, SdfRegion>,
        checked: &mut BTreeSet<&'n str>,
    ) {
        self.attributes(node, &["name", "priority", "stack_size"]);
        self.no_text(node);
        let Some(name) = self.required(node, "name") else { return };
        if !checked.insert(name) {
            let first_line = node
                .prev_siblings()
                .find(|n| n.tag_name().name() == "protection_domain" && n.attribute("name") == Some(name))
                .map_or(0, |n| self.line(n));
            self.push(SdfError::Duplicate { at: self.at(node), what: format!("protection domain {name}"), first_line });
            return;
        }
        self.summary.pds += 1;
        let pd = layout::pd(name);
        if pd.is_none() {
            let known = layout::PDS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
            self.push(SdfError::UnknownPd { at: self.at(node), name: name.to_owned(), known });
        }
        let priority = self.number(node, "priority").map(|p| p.unwrap_or(0));
        let stack = self.number(node, "stack_size").map(|s| s.unwrap_or(layout::MICROKIT_DEFAULT_STACK_SIZE));
        if let Some(p) = priority
            && p > u64::from(layout::MAX_PRIORITY)
        {
            self.bad(node, "priority", node.attribute("priority").unwrap_or(""), "priorities are 0..=254");
        }
        if let (Some(pd), Some(p)) = (pd, priority)
            && p != u64::from(pd.priority)
        {
            self.mismatch(node, "priority", p, pd.priority);
        }
        if let (Some(pd), Some(s)) = (pd, stack)
            && s != pd.stack_size
        {
            self.mismatch(node, "stack_size", format_args!("{s:#x}"), format_args!("{:#x}", pd.stack_size));
        }

        let mut image_line = None;
        let mut maps: Vec<SdfMap> = Vec::new();
        let mut seen_maps: BTreeMap<String, u32> = BTreeMap::new();
        let mut seen_irqs: BTreeMap<u64, u32> = BTreeMap::new();
        let mut seen_setvars: BTreeMap<String, u32> = BTreeMap::new();
        for child in node.children().filter(Node::is_element) {
            let line = self.line(child);
            if child.tag_name().namespace().is_some() {
                self.push(SdfError::UnknownElement { at: self.at(child), expected: PD_CHILDREN });
                continue;
            }
            match child.tag_name().name() {
                "program_image" => {
                    self.attributes(child, &["path"]);
                    self.no_text(child);
                    self.no_children(child, "nothing");
                    if let Some(first_line) = image_line {
                        self.push(SdfError::Duplicate { at: self.at(child), what: "program_image".into(), first_line });
                        continue;
                    }
                    image_line = Some(line);
                    if let (Some(path), Some(pd)) = (self.required(child, "path"), pd)
                        && path != pd.program_image
                    {
                        self.mismatch(child, "path", path, pd.program_image);
                    }
                }
                "map" => {
                    if let Some(m) = self.map(child, name, regions, &mut seen_maps) {
                        maps.push(m);
                    }
                }
                "irq" => self.irq(child, name, &mut seen_irqs),
                "setvar" => self.setvar(child, name, regions, &mut seen_setvars),
                _ => self.push(SdfError::UnknownElement { at: self.at(child), expected: PD_CHILDREN }),
            }
        }

        if image_line.is_none() {
            self.push(SdfError::Missing { at: self.at(node), what: format!("the program_image of {name}") });
        }
        self.overlaps(name, &mut maps);
        let Some(pd) = pd else { return };
        for m in layout::MAPPINGS.iter().filter(|m| m.pd.name == pd.name) {
            if !seen_maps.contains_key(m.region.name) {
                let what = format!("the mapping of {} at {:#x} ({})", m.region.name, m.vaddr, m.perms);
                self.push(SdfError::Missing { at: self.at(node), what });
            }
        }
        for i in layout::IRQS.iter().filter(|i| i.pd.name == pd.name) {
            if !seen_irqs.contains_key(&u64::from(i.irq())) {
                let what = format!("interrupt {} (id {}) of device {}", i.irq(), i.id, i.device.name);
                self.push(SdfError::Missing { at: self.at(node), what });
            }
        }
        for s in layout::SETVARS.iter().filter(|s| s.pd.name == pd.name) {
            if !seen_setvars.contains_key(s.symbol) {
                let what = format!("setvar {} (physical address of {})", s.symbol, s.region.name);
                self.push(SdfError::Missing { at: self.at(node), what });
            }
        }
    }

    fn map(
        &mut self,
        node: Node,
        pd_name: &str,
        regions: &BTreeMap<String, SdfRegion>,
        seen: &mut BTreeMap<String, u32>,
    ) -> Option<SdfMap> {
        self.attributes(node, &["mr", "vaddr", "perms", "cached"]);
        self.no_text(node);
        self.no_children(node, "nothing");
        let mr = self.required(node, "mr");
        let vaddr = self.required(node, "vaddr").and_then(|_| self.number(node, "vaddr").flatten());
        let perms = match node.attribute("perms") {
            None => Some(layout::Perms::RW),
            Some(v) => match layout::Perms::parse(v) {
                Some(p) if p.microkit_accepts() => Some(p),
                Some(_) => {
                    self.bad(node, "perms", v, "write-only mappings are not allowed");
                    None
                }
                None => {
                    self.bad(node, "perms", v, "only r, w and x may appear");
                    None
                }
            },
        };
        let cached = self.boolean(node, "cached", true);
        let mr = mr?;
        self.summary.maps += 1;
        let line = self.line(node);
        if let Some(first_line) = seen.get(mr) {
            let what = format!("the mapping of {mr} into {pd_name}");
            self.push(SdfError::Duplicate { at: self.at(node), what, first_line: *first_line });
            return None;
        }
        seen.insert(mr.to_owned(), line);
        if let Some(vaddr) = vaddr
            && !vaddr.is_multiple_of(layout::PAGE_SIZE)
        {
            self.bad(node, "vaddr", node.attribute("vaddr").unwrap_or(""), "not aligned to the 4 KiB page");
        }

        let declared = regions.get(mr);
        let region = layout::region(mr);
        match (declared, region) {
            (None, None) => self.push(SdfError::UnknownRegion { at: self.at(node), name: mr.to_owned() }),
            (None, Some(_)) => {
                self.push(SdfError::Undeclared { at: self.at(node), what: "memory region", name: mr.to_owned() })
            }
            _ => {}
        }
        // The secret and device rules hold for any PD, known to the layout or not.
        if let Some(r) = region {
            let expected = layout::mapping(pd_name, mr);
            if (r.secret || r.handoff) && expected.is_none() {
                let owner = layout::mappings_of(mr).map(|m| m.pd.name).collect::<Vec<_>>().join(" and ");
                self.push(SdfError::SecretShared {
                    at: self.at(node),
                    region: mr.to_owned(),
                    pd: pd_name.to_owned(),
                    owner,
                });
            } else if let Some(device) = r.device().filter(|d| d.driver.name != pd_name) {
                self.push(SdfError::NotDriver {
                    at: self.at(node),
                    what: format!("region {mr}"),
                    device: device.name.to_owned(),
                    pd: pd_name.to_owned(),
                    driver: device.driver.name.to_owned(),
                });
            } else if let Some(m) = expected {
                if let Some(v) = vaddr
                    && v != m.vaddr
                {
                    self.mismatch(node, "vaddr", format_args!("{v:#x} in {pd_name}"), format_args!("{:#x}", m.vaddr));
                }
                if let Some(p) = perms
                    && p != m.perms
                {
                    self.mismatch(node, "perms", format_args!("{p} in {pd_name}"), m.perms);
                }
                if let Some(c) = cached
                    && c != m.cached
                {
                    self.mismatch(node, "cached", format_args!("{c} in {pd_name}"), m.cached);
                }
            } else if layout::pd(pd_name).is_some() {
                self.push(SdfError::Unexpected {
                    at: self.at(node),
                    pd: pd_name.to_owned(),
                    what: format!("a mapping of {mr}"),
                });
            }
        }

        let size = declared.and_then(|d| d.size).or(region.map(|r| r.size))?;
        let start = vaddr?;
        let end = start.saturating_add(size);
        Some(SdfMap { region: mr.to_owned(), start, end, line, at: self.at(node) })
    }

    fn overlaps(&mut self, pd: &str, maps: &mut [SdfMap]) {
        maps.sort_by_key(|m| (m.start, m.line));
        for (i, a) in maps.iter().enumerate() {
            for b in &maps[i + 1..] {
                if b.start >= a.end {
                    break;
                }
                // Report at the later line, naming the earlier.
                let (later, earlier) = if b.line >= a.line { (b, a) } else { (a, b) };
                self.errors.push(SdfError::Overlap {
                    at: later.at.clone(),
                    pd: pd.to_owned(),
                    region: later.region.clone(),
                    start: later.start,
                    end: later.end,
                    other: earlier.region.clone(),
                    other_start: earlier.start,
                    other_end: earlier.end,
                    other_line: earlier.line,
                });
            }
        }
    }

    fn irq(&mut self, node: Node, pd_name: &str, seen: &mut BTreeMap<u64, u32>) {
        self.attributes(node, &["irq", "id", "trigger"]);
        self.no_text(node);
        self.no_children(node, "nothing");
        let number = self.required(node, "irq").and_then(|v| match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.bad(node, "irq", v, "not a decimal integer (Microkit reads IRQ numbers as decimals)");
                None
            }
        });
        let id = self.required(node, "id").and_then(|_| self.channel_id(node, "id"));
        let trigger = match node.attribute("trigger") {
            None => Some(layout::Trigger::Level),
            Some(v) => {
                let t = layout::Trigger::parse(v);
                if t.is_none() {
                    self.bad(node, "trigger", v, "must be level or edge");
                }
                t
            }
        };
        if let Some(id) = id {
            self.use_id(pd_name, id, node);
        }
        let Some(number) = number else { return };
        self.summary.irqs += 1;
        let line = self.line(node);
        if let Some(first_line) = seen.get(&number) {
            let what = format!("interrupt {number} in {pd_name}");
            self.push(SdfError::Duplicate { at: self.at(node), what, first_line: *first_line });
            return;
        }
        seen.insert(number, line);
        let known_pd = layout::pd(pd_name).is_some();
        match layout::IRQS.iter().find(|i| u64::from(i.irq()) == number) {
            Some(i) if i.pd.name != pd_name => self.push(SdfError::NotDriver {
                at: self.at(node),
                what: format!("interrupt {number}"),
                device: i.device.name.to_owned(),
                pd: pd_name.to_owned(),
                driver: i.pd.name.to_owned(),
            }),
            Some(i) => {
                if let Some(id) = id
                    && id != u64::from(i.id)
                {
                    self.mismatch(node, "id", id, i.id);
                }
                if let Some(t) = trigger
                    && t != i.trigger
                {
                    self.mismatch(node, "trigger", t, i.trigger);
                }
            }
            None if known_pd => self.push(SdfError::Unexpected {
                at: self.at(node),
                pd: pd_name.to_owned(),
                what: format!("interrupt {number}"),
            }),
            None => {}
        }
    }

    fn setvar(
        &mut self,
        node: Node,
        pd_name: &str,
        regions: &BTreeMap<String, SdfRegion>,
        seen: &mut BTreeMap<String, u32>,
    ) {
        self.attributes(node, &["symbol", "region_paddr"]);
        self.no_text(node);
        self.no_children(node, "nothing");
        let symbol = self.required(node, "symbol");
        let region = self.required(node, "region_paddr");
        let (Some(symbol), Some(region)) = (symbol, region) else { return };
        self.summary.setvars += 1;
        let line = self.line(node);
        if let Some(first_line) = seen.get(symbol) {
            let what = format!("setvar {symbol} in {pd_name}");
            self.push(SdfError::Duplicate { at: self.at(node), what, first_line: *first_line });
            return;
        }
        seen.insert(symbol.to_owned(), line);
        match (regions.contains_key(region), layout::region(region)) {
            (false, None) => self.push(SdfError::UnknownRegion { at: self.at(node), name: region.to_owned() }),
            (false, Some(_)) => {
                self.push(SdfError::Undeclared { at: self.at(node), what: "memory region", name: region.to_owned() })
            }
            _ => {}
        }
        if let Some(device) = layout::region(region).and_then(|r| r.device()).filter(|d| d.driver.name != pd_name) {
            self.push(SdfError::NotDriver {
                at: self.at(node),
                what: format!("the physical address of region {region}"),
                device: device.name.to_owned(),
                pd: pd_name.to_owned(),
                driver: device.driver.name.to_owned(),
            });
            return;
        }
        match layout::SETVARS.iter().find(|s| s.pd.name == pd_name && s.symbol == symbol) {
            Some(s) if s.region.name != region => {
                self.mismatch(node, "region_paddr", region, s.region.name);
            }
            Some(_) => {}
            None if layout::pd(pd_name).is_some() => self.push(SdfError::Unexpected {
                at: self.at(node),
                pd: pd_name.to_owned(),
                what: format!("setvar {symbol} (physical address of {region})"),
            }),
            None => {}
        }
    }

    fn channel(&mut self, node: Node, pds: &BTreeMap<String, u32>, seen: &mut BTreeMap<[&'static str; 2], u32>) {
        self.attributes(node, &[]);
        self.no_text(node);
        let mut ends = Vec::new();
        for end in node.children().filter(Node::is_element) {
            if end.tag_name().name() != "end" || end.tag_name().namespace().is_some() {
                self.push(SdfError::UnknownElement { at: self.at(end), expected: "end" });
                continue;
            }
            self.attributes(end, &["pd", "id", "pp", "notify"]);
            self.no_text(end);
            self.no_children(end, "nothing");
            let pd = self.required(end, "pd");
            let id = self.required(end, "id").and_then(|_| self.channel_id(end, "id"));
            let pp = self.boolean(end, "pp", false);
            let notify = self.boolean(end, "notify", true);
            let Some(pd) = pd else { continue };
            match (pds.contains_key(pd), layout::pd(pd)) {
                (_, None) => {
                    let known = layout::PDS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
                    self.push(SdfError::UnknownPd { at: self.at(end), name: pd.to_owned(), known });
                }
                (false, Some(_)) => {
                    self.push(SdfError::Undeclared { at: self.at(end), what: "protection domain", name: pd.to_owned() })
                }
                (true, Some(_)) => {}
            }
            if let Some(id) = id {
                self.use_id(pd, id, end);
            }
            ends.push((end, layout::pd(pd), id, pp, notify));
        }
        self.summary.channels += 1;
        if ends.len() != 2 {
            let problem = format!("has {} end elements; a channel has exactly two", ends.len());
            self.push(SdfError::Structure { at: self.at(node), problem });
            return;
        }
        if ends[0].3 == Some(true) && ends[1].3 == Some(true) {
            let problem = "lets both ends call the other (pp); protected calls go one way only".to_owned();
            self.push(SdfError::Structure { at: self.at(node), problem });
        }
        let (Some(a), Some(b)) = (ends[0].1, ends[1].1) else { return };
        let Some(c) = layout::channel_between(a.name, b.name).filter(|_| a.name != b.name) else {
            self.push(SdfError::UnexpectedChannel { at: self.at(node), a: a.name.to_owned(), b: b.name.to_owned() });
            return;
        };
        let mut pair = [a.name, b.name];
        pair.sort();
        let line = self.line(node);
        if let Some(first_line) = seen.get(&pair) {
            let what = format!("the channel between {} and {}", pair[0], pair[1]);
            self.push(SdfError::Duplicate { at: self.at(node), what, first_line: *first_line });
            return;
        }
        seen.insert(pair, line);
        for (end, pd, id, pp, notify) in &ends {
            let Some(pd) = pd else { continue };
            let expected = if c.a.pd.name == pd.name { &c.a } else { &c.b };
            if let Some(id) = id
                && *id != u64::from(expected.id)
            {
                self.mismatch(*end, "id", id, expected.id);
            }
            if let Some(pp) = pp
                && *pp != expected.pp
            {
                self.mismatch(*end, "pp", pp, expected.pp);
            }
            if let Some(notify) = notify
                && *notify != expected.notify
            {
                self.mismatch(*end, "notify", notify, expected.notify);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_microkit() {
        assert_eq!(parse_number("0x1000_0000"), Some(0x1000_0000));
        assert_eq!(parse_number("4096"), Some(4096));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("0X10"), None, "Microkit only knows a lowercase 0x");
        assert_eq!(parse_number("ten"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0x1_0000_0000_0000_0000"), None, "overflow");
    }

    #[test]
    fn bools_are_exactly_true_or_false() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("TRUE"), None);
        assert_eq!(parse_bool("1"), None);
    }

    #[test]
    fn an_error_prints_file_line_element_and_reason() {
        let e = SdfError::SecretShared {
            at: At { file: "sdf/x.system".into(), line: 42, element: "<map mr=\"ledger_state\">".into() },
            region: "ledger_state".into(),
            pd: "link".into(),
            owner: "ledger".into(),
        };
        assert_eq!(
            e.to_string(),
            "sdf/x.system:42: <map mr=\"ledger_state\"> maps secret region ledger_state into link; it may only be \
             mapped into ledger"
        );
        assert_eq!((e.kind(), e.line(), e.element()), ("secret_shared", 42, "<map mr=\"ledger_state\">"));
    }

    #[test]
    fn invalid_utf8_is_malformed_at_its_line_and_column() {
        let errs = check_bytes("f", b"<system>\n  <x\xff/>\n</system>").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].kind(), errs[0].line()), ("malformed", 2));
        let SdfError::Malformed { column, .. } = &errs[0] else { panic!() };
        assert_eq!(*column, 5);
    }
}
