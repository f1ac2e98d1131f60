//! A low-latency fork-join for the decode kernels.
//!
//! A decode step runs a few hundred GEMVs of tens of microseconds each, with serial work in
//! between. Measured on this project's 2-core machines, rayon's fork-join costs about 10 µs per
//! call at that grain (waking, splitting, joining), which made a 2-thread 576×576 int8 GEMV
//! *slower* than one thread. llama.cpp's answer, copied here: persistent workers that spin on a
//! generation counter for a short while after each job (then sleep), and a job that hands out
//! contiguous tasks through one atomic counter.
//!
//! One job runs at a time; a caller that finds the pool busy (another thread's job, e.g. a
//! tensor-parallel rank, or a call from inside a task) runs its tasks inline, so the pool never
//! deadlocks and never oversubscribes. Workers are `threads - 1` (rayon's thread count, so
//! `RAYON_NUM_THREADS` sizes both); the caller is the remaining one.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the serial gaps between the
/// kernels of one decode step, short enough not to hold a core between requests.
const SPIN_US: u64 = 300;

fn spin() -> Duration {
    static S: OnceLock<Duration> = OnceLock::new();
    *S.get_or_init(|| {
        Duration::from_micros(
            std::env::var("SILICA_POOL_SPIN_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(SPIN_US),
        )
    })
}

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    finished: AtomicUsize,
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Job<'_> {
    /// Takes and runs tasks until none are left.
    fn work(&self) {
        loop {
            let t = self.next.fetch_add(1, SeqCst);
            if t >= self.n {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(t))) {
                self.panicked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(p);
            }
            self.finished.fetch_add(1, SeqCst);
        }
    }
}

struct Shared {
    /// The current job (a `Job` on the caller's stack), null between jobs.
    job: AtomicPtr<Job<'static>>,
    generation: AtomicUsize,
    /// Workers between "saw a job" and "done with it": the caller waits for 0 before its job
    /// (and the closure it borrows) goes away.
    active: AtomicUsize,
    sleepers: Mutex<usize>,
    wake: Condvar,
    busy: AtomicBool,
}

struct Pool {
    shared: &'static Shared,
    workers: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        }));
        let workers = rayon::current_num_threads().saturating_sub(1);
        let mut started = 0;
        for i in 0..workers {
            let ok = std::thread::Builder::new()
                .name(format!("silica-kernels-{i}"))
                .spawn(move || worker(shared))
                .is_ok();
            started += ok as usize;
        }
        Pool {
            shared,
            workers: started,
        }
    })
}

fn worker(s: &'static Shared) {
    let mut seen = s.generation.load(SeqCst);
    loop {
        // Spin (yielding, so a runnable thread gets the core), then sleep.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(SeqCst) == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                if t0.elapsed() > spin() {
                    let mut n = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    while s.generation.load(SeqCst) == seen {
                        n = s.wake.wait(n).unwrap_or_else(|e| e.into_inner());
                    }
                    *n -= 1;
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        seen = s.generation.load(SeqCst);
        s.active.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst);
        if !p.is_null() {
            // SAFETY: the caller keeps the job alive until `active` is back to 0, and it only
            // checks that after clearing `job`; this worker incremented `active` before it
            // loaded a non-null `job`, so the job outlives this use.
            unsafe { (*p).work() };
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

/// Runs `f(0)`, …, `f(n - 1)` on the pool's workers and the calling thread; returns when all
/// have run. A panic in any task is resumed on the caller after every task has finished.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if n <= 1 || p.workers == 0 || p.shared.busy.swap(true, SeqCst) {
        (0..n).for_each(f);
        return;
    }
    let s = p.shared;
    let job = Job {
        f,
        n,
        next: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        panicked: Mutex::new(None),
    };
    // The 'static is a lie the protocol makes true: see `worker`.
    s.job
        .store(&job as *const Job<'_> as *mut Job<'static>, SeqCst);
    s.generation.fetch_add(1, SeqCst);
    if *s.sleepers.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
        s.wake.notify_all();
    }
    job.work();
    while job.finished.load(SeqCst) < n {
        std::hint::spin_loop();
    }
    s.job.store(std::ptr::null_mut(), SeqCst);
    while s.active.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    s.busy.store(false, SeqCst);
    if let Some(p) = job.panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// Runs `f(t, chunk_t)` for the `chunk`-sized pieces of `out` (the last may be shorter) on
/// the pool.
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let tasks = out.len().div_ceil(chunk);
    if tasks <= 1 {
        f(0, out);
        return;
    }
    struct Out<T>(*mut T, usize);
    // SAFETY: tasks write disjoint ranges of `out` (below), which outlives the call.
    unsafe impl<T: Send> Sync for Out<T> {}
    impl<T> Out<T> {
        /// Task t's range.
        #[allow(clippy::mut_from_ref)]
        fn part(&self, t: usize, chunk: usize) -> &mut [T] {
            let start = t * chunk;
            let len = chunk.min(self.1 - start);
            // SAFETY: [start, start + len) lies inside `out` and belongs to task t alone.
            unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
        }
    }
    let o = Out(out.as_mut_ptr(), out.len());
    for_each(tasks, &|t| f(t, o.part(t, chunk)));
}

/// Runs `f(j0, j1, out)` for column ranges `[j0, j1)` covering `0..n`, with `out` pointing at
/// a row-major output whose rows are `n` long. Each call may write columns `j0..j1` of every
/// row and nothing else; the callers' prefill products keep to that, which is what makes the
/// shared pointer sound. With `parallel`, the ranges are about a quarter of a thread's share
/// each (a multiple of `multiple`), handed out by the pool as threads free up, so that one
/// descheduled thread on a shared host does not hold up the product; otherwise one range.
pub fn for_each_column_range(
    n: usize,
    multiple: usize,
    parallel: bool,
    out: &mut [f32],
    f: impl Fn(usize, usize, *mut f32) + Sync,
) {
    let per = if parallel && threads() > 1 {
        n.div_ceil(threads() * 4).next_multiple_of(multiple)
    } else {
        n
    };
    struct Out(*mut f32);
    // SAFETY: tasks write disjoint column ranges [j0, j1) of `out` (the contract above), which
    // outlives the call.
    unsafe impl Sync for Out {}
    impl Out {
        // A method, so closures capture the whole (Sync) wrapper, not the raw field.
        fn ptr(&self) -> *mut f32 {
            self.0
        }
    }
    let per = per.max(1);
    let o = Out(out.as_mut_ptr());
    for_each(n.div_ceil(per), &|t| {
        f(t * per, ((t + 1) * per).min(n), o.ptr())
    });
}

/// Threads a job uses (workers + the caller).
pub fn threads() -> usize {
    pool().workers + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_panics_reach_the_caller() {
        for n in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each(n, &|t| {
                hits[t].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
        }
        let r = catch_unwind(|| for_each(8, &|t| assert!(t != 5, "task five")));
        assert!(r.is_err());
        // The pool still works after a panic, and nested calls run inline.
        let sum = AtomicUsize::new(0);
        for_each(4, &|_| {
            for_each(3, &|t| {
                sum.fetch_add(t, SeqCst);
            })
        });
        assert_eq!(sum.load(SeqCst), 4 * 3);
    }
}
