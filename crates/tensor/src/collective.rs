//! Collectives for tensor-parallel programs: how the ranks of a group meet at an `all-reduce` or
//! `all-gather` while each executes its copy of the same program.
//!
//! [`Collective`] is what an executing rank sees: its rank, the group size, and `exchange`, which
//! contributes a tensor and returns every rank's contribution in rank order. All-reduce and
//! all-gather are computed from that on every rank identically (same data, same order), so the
//! ranks' results agree bit for bit. [`Group`] is the in-process implementation (threads of one
//! process: the CPU backend's ranks, the libnrt double's NeuronCores). A rank that fails aborts
//! the group, so its peers return an error instead of waiting forever for it.

use crate::error::BackendError;
use crate::HostTensor;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One rank's view of its group during an execution.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Contributes `x` and returns every rank's contribution in rank order (the same on every
    /// rank). Every rank must call it the same number of times, in the same program order.
    fn exchange(&self, x: HostTensor) -> Result<Arc<Vec<HostTensor>>, BackendError>;
}

/// A rendezvous for `world` ranks of one process.
pub struct Group {
    world: usize,
    timeout: Option<Duration>,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    slots: Vec<Option<HostTensor>>,
    arrived: usize,
    /// Set when the last rank arrives; taken by every rank before the next round starts.
    result: Option<Arc<Vec<HostTensor>>>,
    to_collect: usize,
    aborted: Option<String>,
}

impl Group {
    /// A group of `world` ranks. With a `timeout`, a rank that waits longer than that for its
    /// peers at one exchange gets an error (and aborts the group) instead of hanging.
    pub fn new(world: usize, timeout: Option<Duration>) -> Arc<Group> {
        Arc::new(Group {
            world: world.max(1),
            timeout,
            state: Mutex::new(State {
                slots: vec![None; world.max(1)],
                ..State::default()
            }),
            cv: Condvar::new(),
        })
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Rank `rank`'s handle.
    pub fn member(self: &Arc<Self>, rank: usize) -> Member {
        Member {
            group: self.clone(),
            rank,
        }
    }

    /// Fails the exchanges of every rank now waiting or arriving later (a rank failed, so its
    /// peers would otherwise wait for it forever).
    pub fn abort(&self, reason: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.aborted.is_none() {
            s.aborted = Some(reason.to_string());
        }
        self.cv.notify_all();
    }

    fn failed(reason: &str) -> BackendError {
        BackendError::Device {
            backend: "collective",
            message: format!("tensor-parallel group aborted: {reason}"),
        }
    }

    fn exchange(&self, rank: usize, x: HostTensor) -> Result<Arc<Vec<HostTensor>>, BackendError> {
        if rank >= self.world {
            return Err(BackendError::InvalidArgument(format!(
                "rank {rank} is outside a group of {}",
                self.world
            )));
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Wait for the previous round to be collected by everyone.
        s = self.wait_while(s, deadline, |s| s.result.is_some())?;
        if s.slots[rank].is_some() {
            return Err(BackendError::InvalidArgument(format!(
                "rank {rank} joined the same exchange twice"
            )));
        }
        s.slots[rank] = Some(x);
        s.arrived += 1;
        if s.arrived == self.world {
            let all: Vec<HostTensor> = s.slots.iter_mut().map(|t| t.take().unwrap()).collect();
            s.result = Some(Arc::new(all));
            s.arrived = 0;
            s.to_collect = self.world;
            self.cv.notify_all();
        } else {
            s = self.wait_while(s, deadline, |s| s.result.is_none())?;
        }
        let out = s.result.clone().expect("set by the last rank");
        s.to_collect -= 1;
        if s.to_collect == 0 {
            s.result = None;
            self.cv.notify_all();
        }
        Ok(out)
    }

    fn wait_while<'a>(
        &self,
        mut s: std::sync::MutexGuard<'a, State>,
        deadline: Option<Instant>,
        cond: impl Fn(&State) -> bool,
    ) -> Result<std::sync::MutexGuard<'a, State>, BackendError> {
        loop {
            if let Some(r) = &s.aborted {
                return Err(Self::failed(r));
            }
            if !cond(&s) {
                return Ok(s);
            }
            s = match deadline {
                None => self.cv.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        let reason = format!(
                            "{} of {} ranks reached a collective within {:?}",
                            s.arrived,
                            self.world,
                            self.timeout.unwrap_or_default()
                        );
                        s.aborted = Some(reason.clone());
                        self.cv.notify_all();
                        return Err(Self::failed(&reason));
                    }
                    self.cv
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// One rank of a [`Group`].
#[derive(Clone)]
pub struct Member {
    group: Arc<Group>,
    rank: usize,
}

impl Member {
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }
}

impl Collective for Member {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.group.world
    }
    fn exchange(&self, x: HostTensor) -> Result<Arc<Vec<HostTensor>>, BackendError> {
        self.group.exchange(self.rank, x)
    }
}

/// The group of one: exchange returns the caller's own tensor.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn exchange(&self, x: HostTensor) -> Result<Arc<Vec<HostTensor>>, BackendError> {
        Ok(Arc::new(vec![x]))
    }
}

/// Runs `f(rank, item)` for every item on a thread of its own, all at once (a collective
/// completes only when every rank has reached it, so ranks cannot run one after another), and
/// returns the results in rank order; a rank whose thread panicked gets `on_panic(rank)`.
///
/// `on_panic` is also called from inside a panicking rank's thread while it unwinds: its peers
/// may be waiting for it at a collective, and the joins (in rank order) would otherwise wait
/// for them first — forever, with no timeout. It must therefore be callable twice for a rank
/// (aborting a [`Group`] is).
pub fn on_rank_threads<I: Send, T: Send>(
    items: Vec<I>,
    f: impl Fn(usize, I) -> T + Sync,
    on_panic: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    /// Calls `on_panic` if dropped during a panic (the rank's thread unwinding).
    struct Unwind<'a, T> {
        rank: usize,
        on_panic: &'a (dyn Fn(usize) -> T + Sync),
    }
    impl<T> Drop for Unwind<'_, T> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                drop((self.on_panic)(self.rank));
            }
        }
    }
    let (f, on_panic) = (&f, &on_panic);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(rank, item)| {
                s.spawn(move || {
                    let _unwind = Unwind { rank, on_panic };
                    f(rank, item)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| h.join().unwrap_or_else(|_| on_panic(rank)))
            .collect()
    })
}
