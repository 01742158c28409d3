//! The one chunk executor, for the chunk phase (`run`) and the fit nodes (`sitsflow::fit`):
//! worker threads take items from a shared counter, each with state of its own (GDAL
//! handles are not shared between threads), and hand their results through a bounded
//! channel to the calling thread, which writes them as they come. Memory stays at a few
//! results per worker whatever the number of items.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What to do after an item's work failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Take no new item (the scene stages: one failure fails the stage).
    Stop,
    /// Go on with the other items and report every failure (the chunk phase: the
    /// chunks done are journaled and a rerun resumes from them).
    Continue,
}

/// How a run of the executor ended.
pub struct Outcome<E> {
    /// The items whose work failed, with their errors, in the order they came.
    pub failures: Vec<(usize, E)>,
    /// A worker that could not open its state, or the first `write` that failed (no
    /// item is taken after either).
    pub error: Option<anyhow::Error>,
}

/// Runs `work` on each of `items` on up to `workers` threads, each with the state
/// `open` gives it, and hands each result to `write` on this thread.
pub fn for_each<S, T: Send, E: Send>(
    workers: usize,
    items: &[usize],
    on_failure: OnFailure,
    open: impl Fn() -> anyhow::Result<S> + Sync,
    work: impl Fn(&mut S, usize) -> Result<T, E> + Sync,
    mut write: impl FnMut(usize, T) -> anyhow::Result<()>,
) -> Outcome<E> {
    let workers = workers.min(items.len()).max(1);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let open_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<T, E>)>(workers * 2);
    let mut outcome = Outcome { failures: Vec::new(), error: None };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, open_error, open, work) = (&next, &stop, &open_error, &open, &work);
            scope.spawn(move || {
                let mut state = match open() {
                    Ok(s) => s,
                    Err(e) => {
                        open_error.lock().expect("lock").get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let Some(&item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    let result = work(&mut state, item);
                    if result.is_err() && on_failure == OnFailure::Stop {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if tx.send((item, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (item, result) in rx {
            match result {
                Err(e) => outcome.failures.push((item, e)),
                // After a failed write nothing more is written; the workers stop.
                Ok(_) if outcome.error.is_some() => {}
                Ok(value) => {
                    if let Err(e) = write(item, value) {
                        outcome.error = Some(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    if let Some(e) = open_error.into_inner().expect("lock") {
        outcome.error = Some(e);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_written_once_and_failures_are_kept() {
        let items: Vec<usize> = (0..50).collect();
        let mut written = Vec::new();
        let outcome = for_each(
            4,
            &items,
            OnFailure::Continue,
            || Ok(0usize),
            |calls, i| {
                *calls += 1;
                if i % 10 == 3 { Err(format!("item {i}")) } else { Ok(i * 2) }
            },
            |i, v| {
                assert_eq!(v, i * 2);
                written.push(i);
                Ok(())
            },
        );
        written.sort();
        let mut failed: Vec<usize> = outcome.failures.iter().map(|(i, _)| *i).collect();
        failed.sort();
        assert_eq!(failed, [3, 13, 23, 33, 43]);
        assert_eq!(written.len() + failed.len(), 50);
        assert!(outcome.error.is_none());
    }

    #[test]
    fn stop_takes_no_new_item_after_a_failure_or_a_failed_write() {
        let items: Vec<usize> = (0..1000).collect();
        let outcome = for_each(2, &items, OnFailure::Stop, || Ok(()), |_, i| if i == 5 { Err(i) } else { Ok(i) }, |_, _| Ok(()));
        assert_eq!(outcome.failures.len(), 1);
        let mut writes = 0;
        let outcome = for_each::<(), usize, ()>(
            2,
            &items,
            OnFailure::Continue,
            || Ok(()),
            |_, i| Ok(i),
            |_, _| {
                writes += 1;
                if writes == 3 { anyhow::bail!("disk full") } else { Ok(()) }
            },
        );
        assert_eq!(outcome.error.map(|e| e.to_string()), Some("disk full".to_string()));
        assert_eq!(writes, 3, "nothing is written after a failed write");
        let outcome = for_each::<(), (), ()>(2, &items, OnFailure::Continue, || anyhow::bail!("no GDAL handle"), |_, _| Ok(()), |_, _| Ok(()));
        assert_eq!(outcome.error.map(|e| e.to_string()), Some("no GDAL handle".to_string()));
    }
}
