//! Mutation fuzzing: inputs damaged at random (bits flipped, bytes overwritten with boundary
//! values, cut, runs repeated, bytes removed) and fed to the code under test, which may accept or
//! refuse each one but must never panic (nor, for a server, answer 5xx). Deterministic per seed:
//! a failure names the seed that reproduces it.
//!
//! Budget: `SILICA_FUZZ_ITERS=N` runs N mutations per target (default: the caller's), and
//! `SILICA_FUZZ_SECONDS=S` runs each target for S seconds instead, for long runs
//! (`cargo test --release --test fuzz_files -- --test-threads 1`, say).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// One random mutation of `b` within its first `region` bytes.
pub fn mutate(rng: &mut StdRng, b: &mut Vec<u8>, region: usize) {
    if b.is_empty() {
        return;
    }
    let region = region.min(b.len()).max(1);
    let at = rng.gen_range(0..region);
    match rng.gen_range(0..6) {
        0 => b[at] ^= 1 << rng.gen_range(0..8),
        1 => b[at] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'9', b'-'][rng.gen_range(0..8)],
        2 => b.truncate(at),
        3 => {
            // A run of bytes repeated (lengths and counts grow).
            let end = (at + rng.gen_range(1..16)).min(b.len());
            let run = b[at..end].to_vec();
            b.splice(at..at, run);
        }
        4 => {
            // Overwrite 8 bytes with a boundary integer (lengths, offsets, counts).
            let v: u64 =
                [0, 1, u32::MAX as u64, u64::MAX, 1 << 40, 0x7fff_ffff][rng.gen_range(0..6)];
            for (i, x) in v.to_le_bytes().iter().enumerate() {
                if at + i < b.len() {
                    b[at + i] = *x;
                }
            }
        }
        _ => {
            b.remove(at.min(b.len() - 1));
        }
    }
}

/// 1 to 3 mutations of `original` within its first `region` bytes.
pub fn mutated(rng: &mut StdRng, original: &[u8], region: usize) -> Vec<u8> {
    let mut b = original.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        mutate(rng, &mut b, region);
    }
    b
}

/// Mutations per target: a count (`default` unless SILICA_FUZZ_ITERS), or a time budget
/// (SILICA_FUZZ_SECONDS).
pub fn budget(default: usize) -> (usize, Option<Duration>) {
    let secs = std::env::var("SILICA_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let iters = std::env::var("SILICA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (iters, secs.map(Duration::from_secs))
}

/// What one execution of a fuzz target found.
pub enum Outcome {
    /// The input was accepted (loaded, answered 2xx).
    Accepted,
    /// The input was refused with an error, as it should be for a broken input.
    Refused,
    /// Wrong behaviour other than a panic (a 5xx, a broken response): the message says what.
    Fault(String),
}

/// Runs `exec` once per seed (0, 1, …) within the budget; panics, naming the seed, on a panic
/// inside `exec` or an [`Outcome::Fault`]. Prints and returns (executions, accepted).
pub fn run(
    name: &str,
    default_iters: usize,
    mut exec: impl FnMut(&mut StdRng, u64) -> Outcome,
) -> (usize, usize) {
    let (iters, time) = budget(default_iters);
    let t0 = Instant::now();
    let (mut n, mut ok) = (0usize, 0usize);
    let mut seed = 0u64;
    loop {
        let done = match time {
            Some(t) => t0.elapsed() >= t,
            None => n >= iters,
        };
        if done {
            break;
        }
        let mut rng = StdRng::seed_from_u64(seed);
        match catch_unwind(AssertUnwindSafe(|| exec(&mut rng, seed))) {
            Ok(Outcome::Accepted) => ok += 1,
            Ok(Outcome::Refused) => {}
            Ok(Outcome::Fault(why)) => panic!("{name}: mutation seed {seed}: {why}"),
            Err(_) => panic!("{name}: mutation seed {seed} panicked"),
        }
        n += 1;
        seed += 1;
    }
    eprintln!(
        "{name}: {n} executions in {:.1} s, {ok} accepted, 0 panics, 0 faults",
        t0.elapsed().as_secs_f64()
    );
    (n, ok)
}
