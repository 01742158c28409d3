//! The model blob, format `sitsflow-rf/1`: self-describing, little-endian.
//!
//! ```text
//! magic       12 bytes  "sitsflow-rf\0"
//! version     u32       1
//! sections    u32       number of sections that follow
//! section     name_len u16, name (UTF-8), dtype u8, count u64, payload
//! ```
//! dtype: 1 u8, 2 u16, 3 u32, 4 i32, 5 f32 (payload `count` values), 6 strings
//! (payload `count` × (u32 byte length, UTF-8)). Version 1 writes, in this order:
//! `feature_names` (strings), `classes` (u16), `roots` (u32, first node of each tree),
//! then one entry per node — `feature` (i32, −1 = leaf), `threshold` (f32), `left`,
//! `right` (u32, global node indices), `missing_left` (u8), `leaf_offset` (u32,
//! `u32::MAX` for split nodes) — and `leaf_values` (f32, leaves × classes). A reader
//! finds sections by name and skips names it does not know, so later minor additions
//! stay readable; a change to these sections' meaning bumps the version.

use crate::forest::Forest;

pub const FORMAT: &str = "sitsflow-rf/1";
const MAGIC: &[u8; 12] = b"sitsflow-rf\0";
const VERSION: u32 = 1;

const U8: u8 = 1;
const U16: u8 = 2;
const U32: u8 = 3;
const I32: u8 = 4;
const F32: u8 = 5;
const STR: u8 = 6;

struct Writer(Vec<u8>);

impl Writer {
    fn header(&mut self, name: &str, dtype: u8, count: usize) {
        self.0.extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(dtype);
        self.0.extend_from_slice(&(count as u64).to_le_bytes());
    }
}

macro_rules! put {
    ($w:expr, $name:expr, $dtype:expr, $values:expr) => {{
        let values = $values;
        $w.header($name, $dtype, values.len());
        for v in values {
            $w.0.extend_from_slice(&v.to_le_bytes());
        }
    }};
}

pub fn encode(f: &Forest) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + f.n_nodes() * 21 + f.leaf_values.len() * 4));
    w.0.extend_from_slice(MAGIC);
    w.0.extend_from_slice(&VERSION.to_le_bytes());
    w.0.extend_from_slice(&10u32.to_le_bytes());
    w.header("feature_names", STR, f.feature_names.len());
    for name in &f.feature_names {
        w.0.extend_from_slice(&(name.len() as u32).to_le_bytes());
        w.0.extend_from_slice(name.as_bytes());
    }
    put!(w, "classes", U16, &f.classes);
    put!(w, "roots", U32, &f.roots);
    put!(w, "feature", I32, &f.feature);
    put!(w, "threshold", F32, &f.threshold);
    put!(w, "left", U32, &f.left);
    put!(w, "right", U32, &f.right);
    put!(w, "missing_left", U8, &f.missing_left);
    put!(w, "leaf_offset", U32, &f.leaf_offset);
    put!(w, "leaf_values", F32, &f.leaf_values);
    w.0
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("it ends at byte {} inside {what} (needs {n} more bytes)", self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
}

/// One section's raw payload.
struct Section<'a> {
    dtype: u8,
    count: usize,
    payload: &'a [u8],
}

fn numbers<T, const N: usize>(sections: &[(String, Section)], name: &str, dtype: u8, parse: fn([u8; N]) -> T) -> Result<Vec<T>, String> {
    let (_, s) = sections.iter().find(|(n, _)| n == name).ok_or_else(|| format!("it has no section '{name}'"))?;
    if s.dtype != dtype {
        return Err(format!("section '{name}' has dtype {} instead of {dtype}", s.dtype));
    }
    Ok(s.payload.chunks_exact(N).map(|c| parse(c.try_into().unwrap())).collect())
}

/// Reads a blob; the message says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Forest, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len(), "the magic bytes")? != MAGIC {
        return Err("it does not start with the sitsflow-rf magic bytes".into());
    }
    let version = r.u32("the version")?;
    if version != VERSION {
        return Err(format!("it is sitsflow-rf version {version}; this stage reads version {VERSION}"));
    }
    let n_sections = r.u32("the section count")?;
    let mut sections = Vec::new();
    for _ in 0..n_sections {
        let len = r.u16("a section name")? as usize;
        let name = std::str::from_utf8(r.take(len, "a section name")?).map_err(|_| "a section name is not UTF-8".to_string())?.to_string();
        let dtype = r.take(1, "a section dtype")?[0];
        let count = r.u64(&format!("section '{name}'"))?;
        let count = usize::try_from(count).map_err(|_| format!("section '{name}' claims {count} values"))?;
        let start = r.at;
        let size = match dtype {
            U8 => 1,
            U16 => 2,
            U32 | I32 | F32 => 4,
            STR => {
                for _ in 0..count {
                    let n = r.u32(&format!("section '{name}'"))? as usize;
                    r.take(n, &format!("section '{name}'"))?;
                }
                0
            }
            other => return Err(format!("section '{name}' has unknown dtype {other}")),
        };
        if size > 0 {
            r.take(count.checked_mul(size).ok_or_else(|| format!("section '{name}' is too large"))?, &format!("section '{name}'"))?;
        }
        sections.push((name, Section { dtype, count, payload: &bytes[start..r.at] }));
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes follow the last section", bytes.len() - r.at));
    }

    let (_, names) = sections.iter().find(|(n, _)| n == "feature_names").ok_or_else(|| "it has no section 'feature_names'".to_string())?;
    if names.dtype != STR {
        return Err("section 'feature_names' is not a list of strings".into());
    }
    let mut feature_names = Vec::with_capacity(names.count);
    let mut nr = Reader { bytes: names.payload, at: 0 };
    for _ in 0..names.count {
        let n = nr.u32("a feature name")? as usize;
        let s = std::str::from_utf8(nr.take(n, "a feature name")?).map_err(|_| "a feature name is not UTF-8".to_string())?;
        feature_names.push(s.to_string());
    }
    let forest = Forest {
        feature_names,
        classes: numbers(&sections, "classes", U16, u16::from_le_bytes)?,
        roots: numbers(&sections, "roots", U32, u32::from_le_bytes)?,
        feature: numbers(&sections, "feature", I32, i32::from_le_bytes)?,
        threshold: numbers(&sections, "threshold", F32, f32::from_le_bytes)?,
        left: numbers(&sections, "left", U32, u32::from_le_bytes)?,
        right: numbers(&sections, "right", U32, u32::from_le_bytes)?,
        missing_left: numbers(&sections, "missing_left", U8, u8::from_le_bytes)?,
        leaf_offset: numbers(&sections, "leaf_offset", U32, u32::from_le_bytes)?,
        leaf_values: numbers(&sections, "leaf_values", F32, f32::from_le_bytes)?,
    };
    forest.validate()?;
    Ok(forest)
}
