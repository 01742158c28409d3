//! The run directory as a transaction: a lock, a staging area, and a publish step
//! that a killed process finishes on the next run.
//!
//! ```text
//! <run>/.sitsflow.lock         held (flock) by the one process working in <run>
//! <run>/.partial/key, done     the resume key and the journal of chunks done (run.rs)
//! <run>/.partial/<output>/     chunk files of each output
//! <run>/.partial/out/          everything the run produces, under its final relative name
//! <run>/.partial/publish.json  written once `out/` is complete: the commit point
//! <run>/manifest.json, …       the published run
//! ```
//!
//! Nothing in `<run>` itself changes before the commit point, so a run that fails or is
//! killed before it leaves the previous run's files and manifest exactly as they were.
//! Publishing removes the old manifest first, then the old run's files the new run does
//! not produce, then renames each staged file into place and the new manifest last; a
//! run killed in between leaves no manifest (nothing looks finished), and the next
//! `RunDir::open` rolls the publish forward from `publish.json` before anything else.
//! Rolling forward is idempotent at every point: once the new manifest has left the
//! staging area every file is in place, and only the working folder is left to remove
//! (renamed to `.partial.removing-<pid>` first, so it goes as a whole).

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".sitsflow.lock";
/// The run's record, published last.
pub const MANIFEST: &str = "manifest.json";
/// What a working folder is renamed to before it is deleted (`.partial.removing-<pid>`).
const TRASH_PREFIX: &str = ".partial.removing-";

/// A locked run directory.
pub struct RunDir {
    root: PathBuf,
    /// Whether opening it finished the publish of an interrupted run.
    finished_publish: bool,
    /// Held for the life of the value; the OS releases them when the process dies.
    _locks: Vec<File>,
}

/// Opens (creating) a lock file.
fn lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Records who holds a lock, for the message of the next process that finds it taken.
fn write_holder(lock: &mut File, what: &str) -> Result<()> {
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{what}pid {} on host {}", std::process::id(), crate::fsutil::host_name())?;
    lock.sync_data()?;
    Ok(())
}

/// The error for a lock another process holds, naming it.
fn in_use(root: &Path, lock: &mut File, lock_path: &Path) -> anyhow::Error {
    let mut holder = String::new();
    let _ = lock.read_to_string(&mut holder);
    let holder = holder.trim();
    anyhow::anyhow!(
        "{} is in use by {} (lock file {}); wait for that run to end or give this one another [output] dir",
        root.display(),
        if holder.is_empty() { "another sitsflow process".to_string() } else { holder.to_string() },
        lock_path.display()
    )
}

/// Takes `lock` (alone, or `shared` with other shards), or says who holds it.
fn acquire(root: &Path, lock: &mut File, path: &Path, shared: bool) -> Result<()> {
    let taken = if shared { lock.try_lock_shared() } else { lock.try_lock() };
    match taken {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(in_use(root, lock, path)),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

impl RunDir {
    /// Creates and locks `root` for this process alone, then finishes a publish a
    /// killed run left halfway.
    pub fn open(root: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join(LOCK_FILE);
        let mut lock = lock_file(&lock_path)?;
        acquire(root, &mut lock, &lock_path, false)?;
        write_holder(&mut lock, "")?;
        let mut dir = RunDir { root: root.to_path_buf(), finished_publish: false, _locks: vec![lock] };
        dir.remove_trash();
        if dir.publish_file().exists() {
            log::info!("finishing the publish of a run that was interrupted while publishing into {}", root.display());
            dir.roll_forward()?;
            dir.finished_publish = true;
        }
        Ok(dir)
    }

    /// Opens `root` for shard `index` of `count`: shared with the other shards (a whole
    /// run or an assembly, which lock it alone, is refused meanwhile), and alone for this
    /// shard (`.partial/shard-<i>-of-<n>.lock`). A shard never publishes, so it refuses
    /// a directory with an unfinished publish: `sitsflow assemble` finishes that.
    pub fn open_shard(root: &Path, index: usize, count: usize) -> Result<RunDir> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join(LOCK_FILE);
        let mut lock = lock_file(&lock_path)?;
        // Shards starting together each take the lock shared; an exclusive holder
        // (a whole run, an assembly) makes this fail at once.
        acquire(root, &mut lock, &lock_path, true)?;
        let mut dir = RunDir { root: root.to_path_buf(), finished_publish: false, _locks: vec![lock] };
        if dir.publish_file().exists() {
            bail!(
                "{}: a run was interrupted while publishing; `sitsflow assemble` (or `sitsflow run`) finishes it before shards start",
                root.display()
            );
        }
        std::fs::create_dir_all(dir.partial()).with_context(|| format!("creating {}", dir.partial().display()))?;
        let shard_path = dir.partial().join(format!("shard-{index}-of-{count}.lock"));
        let mut shard = lock_file(&shard_path)?;
        acquire(root, &mut shard, &shard_path, false)?;
        write_holder(&mut shard, &format!("shard {index}/{count}, "))?;
        dir._locks.push(shard);
        Ok(dir)
    }

    /// Whether opening it finished the publish of a run that was interrupted while
    /// publishing (its working folder is then gone).
    pub fn finished_publish(&self) -> bool {
        self.finished_publish
    }

    /// The files the published run lists in its manifest (paths under the run directory).
    pub fn published(&self) -> Vec<PathBuf> {
        previous_files(&self.root.join(MANIFEST)).into_iter().map(|f| self.root.join(f)).collect()
    }

    /// The run directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The working folder (`<run>/.partial`): journal, chunk files, staging.
    pub fn partial(&self) -> PathBuf {
        self.root.join(".partial")
    }

    /// Where the run's files are made, under their final relative names.
    pub fn staging(&self) -> PathBuf {
        self.partial().join("out")
    }

    /// Deletes working folders a killed process was removing (best effort: they hold
    /// nothing a run needs).
    fn remove_trash(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TRASH_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn publish_file(&self) -> PathBuf {
        self.partial().join("publish.json")
    }

    /// The staged files (relative paths, sorted), temporary files of killed writers
    /// removed on the way; the manifest itself is not among them.
    pub fn staged_files(&self) -> Result<Vec<PathBuf>> {
        let staging = self.staging();
        let mut files = Vec::new();
        if staging.exists() {
            walk(&staging, &staging, &mut files)?;
        }
        files.retain(|f| f != Path::new(MANIFEST));
        files.sort();
        Ok(files)
    }

    /// Publishes the staged `files` (as `staged_files` listed them for the manifest) with
    /// `manifest` as the manifest, replacing the previous run in the directory.
    pub fn publish(&self, files: &[PathBuf], manifest: &[u8]) -> Result<()> {
        crate::fsutil::write_atomic(&self.staging().join(MANIFEST), manifest)
            .with_context(|| format!("staging {}", self.staging().join(MANIFEST).display()))?;
        let old = previous_files(&self.root.join(MANIFEST));
        let remove: Vec<&PathBuf> = old.iter().filter(|f| !files.contains(f)).collect();
        let record = json!({
            "publish": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "remove": remove.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        });
        // The commit point: from here on the new run is complete and is rolled forward.
        crate::fsutil::write_atomic(&self.publish_file(), serde_json::to_string_pretty(&record)?.as_bytes())
            .with_context(|| format!("writing {}", self.publish_file().display()))?;
        sync_dir(&self.partial());
        crate::fail_point!("rundir::committed");
        self.roll_forward()
    }

    /// Carries out `publish.json`: idempotent, so a kill at any point is finished by
    /// running it again.
    fn roll_forward(&self) -> Result<()> {
        let path = self.publish_file();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let record: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let list = |key: &str| -> Vec<PathBuf> {
            record[key].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(PathBuf::from)).filter(|p| is_inside(p)).collect()
        };
        let (publish, remove) = (list("publish"), list("remove"));
        let staging = self.staging();
        // The new manifest is renamed into place last: while it is still staged, the
        // old run's manifest (if any) and its files the new run does not make go, and
        // the staged files move; once it is gone from staging, all of that is done and
        // only the working folder is left to remove. Each step checks what is already
        // done, so a kill at any point is finished by running this again.
        if staging.join(MANIFEST).exists() {
            remove_if_present(&self.root.join(MANIFEST))?;
            for rel in &remove {
                remove_if_present(&self.root.join(rel))?;
            }
            for (n, rel) in publish.iter().chain(std::iter::once(&PathBuf::from(MANIFEST))).enumerate() {
                let (from, to) = (staging.join(rel), self.root.join(rel));
                if from.exists() {
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                    }
                    std::fs::rename(&from, &to).with_context(|| format!("publishing {} as {}", from.display(), to.display()))?;
                    if n == 0 {
                        crate::fail_point!("rundir::published_first");
                    }
                } else if !to.exists() {
                    bail!("publishing into {}: the staged {} is gone", self.root.display(), from.display());
                }
            }
            sync_dir(&self.root);
            crate::fail_point!("rundir::published_manifest");
        } else if !self.root.join(MANIFEST).exists() {
            bail!(
                "publishing into {}: {} says a run was being published, but its manifest is neither staged ({}) nor published; \
                 remove {} to start the run afresh",
                self.root.display(),
                path.display(),
                staging.join(MANIFEST).display(),
                self.partial().display()
            );
        } else if let Some(missing) = publish.iter().find(|rel| !self.root.join(rel).exists()) {
            bail!(
                "publishing into {}: the manifest is published but {} is missing; the run directory was changed by hand",
                self.root.display(),
                self.root.join(missing).display()
            );
        }
        self.remove_partial()
    }

    /// Removes the working folder as one step: renamed out of the way first (a kill
    /// cannot leave a journal without the chunk files it lists), then deleted.
    fn remove_partial(&self) -> Result<()> {
        let partial = self.partial();
        let trash = self.root.join(format!("{TRASH_PREFIX}{}", std::process::id()));
        std::fs::rename(&partial, &trash).with_context(|| format!("renaming {} to {}", partial.display(), trash.display()))?;
        sync_dir(&self.root);
        std::fs::remove_dir_all(&trash).with_context(|| format!("removing {}", trash.display()))?;
        Ok(())
    }
}

/// The files the previous run published, from its manifest (`published`, or for
/// manifests older than that list, its `outputs` inside the run directory).
fn previous_files(manifest: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(manifest) else { return Vec::new() };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let root = manifest.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = value["published"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(PathBuf::from)).collect();
    if files.is_empty() {
        for record in value["outputs"].as_array().into_iter().flatten() {
            if let Some(p) = record["path"].as_str().and_then(|p| Path::new(p).strip_prefix(root).ok()) {
                files.push(p.to_path_buf());
            }
        }
    }
    files.retain(|p| is_inside(p) && p != Path::new(MANIFEST));
    files
}

/// A relative path that stays inside the directory it is joined to.
fn is_inside(p: &Path) -> bool {
    p.is_relative() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(base, &path, out)?;
        } else if crate::fsutil::is_temp_name(&path) {
            let _ = std::fs::remove_file(&path);
        } else {
            out.push(path.strip_prefix(base).expect("walked from base").to_path_buf());
        }
    }
    Ok(())
}

/// Makes the renames in `dir` durable (best effort: not every file system allows it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_second_process_is_refused_while_the_first_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let first = RunDir::open(tmp.path()).unwrap();
        let err = RunDir::open(tmp.path()).err().expect("locked").to_string();
        assert!(err.contains(&format!("is in use by pid {} on host", std::process::id())), "{err}");
        drop(first);
        RunDir::open(tmp.path()).expect("free again");
    }

    #[test]
    fn shards_share_the_directory_and_exclude_a_whole_run() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RunDir::open_shard(tmp.path(), 0, 2).unwrap();
        let b = RunDir::open_shard(tmp.path(), 1, 2).unwrap();
        let again = RunDir::open_shard(tmp.path(), 1, 2).err().expect("shard 1 is running").to_string();
        assert!(again.contains("in use by shard 1/2, pid"), "{again}");
        let whole = RunDir::open(tmp.path()).err().expect("shards are running").to_string();
        assert!(whole.contains("is in use by"), "{whole}");
        drop((a, b));
        let whole = RunDir::open(tmp.path()).unwrap();
        assert!(RunDir::open_shard(tmp.path(), 0, 2).is_err(), "a whole run excludes shards");
        drop(whole);
    }

    #[test]
    fn publish_replaces_the_previous_run_and_removes_what_it_no_longer_makes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::open(tmp.path()).unwrap();
        put(&dir.staging().join("a.tif"), "a1");
        put(&dir.staging().join("old.tif"), "o1");
        put(&dir.staging().join("models/m/model.onnx"), "m1");
        put(&dir.staging().join(".b.tif.partial-host-1"), "torn");
        let files = dir.staged_files().unwrap();
        assert_eq!(files, [PathBuf::from("a.tif"), "models/m/model.onnx".into(), "old.tif".into()]);
        let manifest = json!({ "published": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>() });
        dir.publish(&files, manifest.to_string().as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("models/m/model.onnx")).unwrap(), "m1");
        assert!(!dir.partial().exists());

        put(&dir.staging().join("a.tif"), "a2");
        let manifest = json!({ "published": ["a.tif"] });
        dir.publish(&dir.staged_files().unwrap(), manifest.to_string().as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("a.tif")).unwrap(), "a2");
        assert!(!tmp.path().join("old.tif").exists(), "the previous run's file the new one does not make is gone");
        assert!(!tmp.path().join("models/m/model.onnx").exists());
        assert!(tmp.path().join(MANIFEST).exists());
    }

    #[test]
    fn an_interrupted_publish_is_rolled_forward_by_the_next_open() {
        let tmp = tempfile::tempdir().unwrap();
        put(&tmp.path().join("a.tif"), "old");
        put(&tmp.path().join(MANIFEST), r#"{"published": ["a.tif"]}"#);
        {
            let dir = RunDir::open(tmp.path()).unwrap();
            put(&dir.staging().join("a.tif"), "new");
            put(&dir.staging().join("b.tif"), "new b");
            put(&dir.staging().join(MANIFEST), r#"{"published": ["a.tif", "b.tif"]}"#);
            put(&dir.publish_file(), r#"{"publish": ["a.tif", "b.tif"], "remove": []}"#);
            // As if killed after the old manifest went and the first file moved.
            std::fs::remove_file(tmp.path().join(MANIFEST)).unwrap();
            std::fs::rename(dir.staging().join("a.tif"), tmp.path().join("a.tif")).unwrap();
        }
        RunDir::open(tmp.path()).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("a.tif")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(tmp.path().join("b.tif")).unwrap(), "new b");
        assert!(std::fs::read_to_string(tmp.path().join(MANIFEST)).unwrap().contains("b.tif"));
        assert!(!tmp.path().join(".partial").exists());
    }

    #[test]
    fn a_kill_after_the_manifest_is_published_keeps_it_and_the_next_open_finishes() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let dir = RunDir::open(tmp.path()).unwrap();
            put(&dir.staging().join("a.tif"), "new");
            put(&dir.partial().join("done"), "journal");
            put(&dir.publish_file(), r#"{"publish": ["a.tif"], "remove": []}"#);
            // As if killed after every rename, the manifest's included, and before the
            // working folder went.
            std::fs::rename(dir.staging().join("a.tif"), tmp.path().join("a.tif")).unwrap();
            put(&tmp.path().join(MANIFEST), r#"{"published": ["a.tif"]}"#);
        }
        for _ in 0..2 {
            RunDir::open(tmp.path()).unwrap();
            assert_eq!(std::fs::read_to_string(tmp.path().join(MANIFEST)).unwrap(), r#"{"published": ["a.tif"]}"#);
            assert_eq!(std::fs::read_to_string(tmp.path().join("a.tif")).unwrap(), "new");
            assert!(!tmp.path().join(".partial").exists());
        }
    }

    #[test]
    fn a_working_folder_killed_while_being_removed_is_removed_by_the_next_open() {
        let tmp = tempfile::tempdir().unwrap();
        put(&tmp.path().join(format!("{TRASH_PREFIX}123/done")), "journal");
        RunDir::open(tmp.path()).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "only the lock file is left");
    }
}
