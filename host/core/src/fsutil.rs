//! Writing files so that a reader never sees a half-written one: write to a
//! temporary name in the same directory, sync, then rename over the target.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What marks a temporary name (`.<name>.partial-<host>-<pid>`).
const TEMP_MARK: &str = ".partial-";

/// The temporary name used while `path` is being written: unique per host and
/// process, so writers on several machines sharing a file system never meet.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_MARK}{}-{}", host_name(), std::process::id()))
}

/// Whether `path` is a temporary name of `temp_path` (a writer's unfinished file).
pub fn is_temp_name(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with('.') && n.contains(TEMP_MARK)
    })
}

/// This machine's host name (`gethostname`), with characters unfit for file names
/// replaced; `localhost` when it cannot be read.
pub fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name: String = String::from_utf8_lossy(&buf[..end])
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .collect();
        if ok && !name.is_empty() { name } else { "localhost".to_string() }
    })
    .clone()
}

/// When the file system holding `path` is (nearly) full, a sentence saying so, to add
/// to a write error: GDAL reports a full disk as a bare "IO error".
pub fn space_hint(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.ancestors().find(|a| a.exists())?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid C string; statvfs only writes into `stat`.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    (free < 1 << 20).then(|| format!("no space left on the device holding {} ({free} bytes free)", dir.display()))
}

/// Adds `space_hint` to an error about writing `path`.
pub fn with_space_hint<T>(result: anyhow::Result<T>, path: &Path) -> anyhow::Result<T> {
    result.map_err(|e| match space_hint(path) {
        Some(hint) => e.context(hint),
        None => e,
    })
}

/// Writes `bytes` to `path` atomically (creating parent directories).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Produces `path` by letting `write` fill a temporary file, then renaming it.
/// On error the temporary file is removed and `path` is left as it was.
pub fn produce<T>(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = temp_path(path);
    match write(&tmp) {
        Ok(value) => {
            std::fs::rename(&tmp, path)?;
            Ok(value)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The most bytes of an input value a message echoes.
pub const SHOWN_VALUE_BYTES: usize = 200;

/// A value as a message shows it: quoted and escaped (`{:?}`), cut to about
/// [`SHOWN_VALUE_BYTES`] with its full length said, so an error never echoes megabytes.
pub fn shown_value(value: &str) -> String {
    let head = head(value, SHOWN_VALUE_BYTES);
    if head.len() == value.len() { format!("{value:?}") } else { format!("{head:?}… ({} bytes in all)", value.len()) }
}

/// The first `max` bytes of `text` or a little fewer, ending at a character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The most bytes of one message (a plugin's error text, a schema's complaint) shown.
pub const SHOWN_MESSAGE_BYTES: usize = 2000;

/// `text` cut to about `max` bytes (at a character boundary) with its full length said.
pub fn cut_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let head = head(text, max);
    if head.len() == text.len() {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(format!("{head}… ({} bytes in all)", text.len()))
    }
}

/// Where `path` really is: absolute, every symbolic link resolved in the part that
/// exists (its deepest existing ancestor, canonicalised), the rest appended as written
/// and normalised. Two paths name the same place when their resolved forms are equal,
/// whatever links lead there.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return normalize(&out);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return normalize(&absolute),
        }
    }
}

/// Removes `.` and resolves `..` lexically (no file-system access), so paths shown to
/// operators read `runs/demo` rather than `configs/../runs/demo`.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let last = out.components().next_back();
                if matches!(last, Some(Component::Normal(_))) {
                    out.pop();
                } else if !matches!(last, Some(Component::RootDir | Component::Prefix(_))) {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// `path` relative to `base`, lexically (both normalised first); `path` unchanged when
/// one is absolute and the other is not.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (path, base) = (normalize(path), normalize(base));
    if path.is_absolute() != base.is_absolute() {
        return path;
    }
    let base_parts: Vec<_> = base.components().filter(|c| *c != std::path::Component::CurDir).collect();
    let path_parts: Vec<_> = path.components().collect();
    let common = base_parts.iter().zip(&path_parts).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base_parts.len() {
        out.push("..");
    }
    for part in &path_parts[common..] {
        out.push(part);
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_host_and_pid_and_are_recognised() {
        let tmp = temp_path(Path::new("/run/a.tif"));
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".a.tif.partial-") && name.ends_with(&format!("-{}", std::process::id())), "{name}");
        assert!(name.contains(&host_name()), "{name}");
        assert!(is_temp_name(&tmp));
        assert!(!is_temp_name(Path::new("/run/a.tif")) && !is_temp_name(Path::new("/run/.partial")));
    }

    #[test]
    fn normalize_resolves_dots_lexically() {
        assert_eq!(normalize(Path::new("configs/../runs/demo")), Path::new("runs/demo"));
        assert_eq!(normalize(Path::new("./a/./b/")), Path::new("a/b"));
        assert_eq!(normalize(Path::new("../x/../../y")), Path::new("../../y"));
        assert_eq!(normalize(Path::new("/a/../../b")), Path::new("/b"));
        assert_eq!(normalize(Path::new("a/..")), Path::new("."));
    }

    #[test]
    fn relative_to_walks_up_and_down() {
        assert_eq!(relative_to(Path::new("data/demo/series"), Path::new("configs")), Path::new("../data/demo/series"));
        assert_eq!(relative_to(Path::new("/t/x/plugins"), Path::new("/t/x")), Path::new("plugins"));
        assert_eq!(relative_to(Path::new("configs/demo.lock"), Path::new("configs")), Path::new("demo.lock"));
        assert_eq!(relative_to(Path::new("a"), Path::new(".")), Path::new("a"));
    }

    #[cfg(unix)]
    #[test]
    fn resolve_follows_links_in_the_part_that_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("data");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(tmp.path().join("runs")).unwrap();
        std::os::unix::fs::symlink("../data", tmp.path().join("runs/link")).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        assert_eq!(resolve(&tmp.path().join("runs/link")), real);
        assert_eq!(resolve(&tmp.path().join("runs/link/new/run")), real.join("new/run"));
        assert_eq!(resolve(&tmp.path().join("runs/./other")), std::fs::canonicalize(tmp.path()).unwrap().join("runs/other"));
    }

    #[test]
    fn a_long_value_is_cut_when_shown() {
        assert_eq!(shown_value("a\0b"), "\"a\\0b\"");
        let long = "é".repeat(10_000);
        let shown = shown_value(&long);
        assert!(shown.len() < 300 && shown.ends_with("(20000 bytes in all)"), "{shown}");
    }
}
