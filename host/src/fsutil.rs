//! Writing files so that a reader never sees a half-written one: write to a
//! temporary name in the same directory, sync, then rename over the target.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
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
}
