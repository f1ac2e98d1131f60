//! Training batches: rows of `seq_len + 1` token ids (inputs and shifted targets).
//!
//! - [`BatchFile`]: a safetensors file with an integer tensor `input_ids` [steps, batch, seq_len + 1];
//!   step `s` trains on exactly `input_ids[s]` — reproducible and comparable across frameworks.
//! - [`PackedText`]: a token stream cut into non-overlapping windows of `seq_len + 1`, shuffled
//!   once per epoch by a seeded RNG; step `s` takes windows `s·batch ..` of the endless shuffled
//!   stream, so a resumed run sees exactly the batches an uninterrupted one would.

use crate::error::{Result, TrainError};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use silica_tensor::{HostTensor, SafetensorsFile};
use std::path::{Path, PathBuf};

/// A source of batches, indexed by step.
pub trait Batches {
    /// Sequences per batch.
    fn batch(&self) -> usize;
    /// Positions trained per sequence.
    fn seq_len(&self) -> usize;
    /// Steps available (None: endless).
    fn steps(&self) -> Option<u64>;
    /// Token ids of step `s`, row-major [batch, seq_len + 1].
    fn get(&self, s: u64) -> Result<Vec<i32>>;
}

/// Checks that every id is a valid token of a `vocab`-sized model.
pub fn check_ids(ids: &[i32], vocab: usize, path: &Path) -> Result<()> {
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            message: format!("token id {bad} is outside the model's vocabulary of {vocab}"),
        });
    }
    Ok(())
}

pub struct BatchFile {
    path: PathBuf,
    dims: [usize; 3],
    ids: Vec<i32>,
}

impl BatchFile {
    pub fn open(path: &Path, vocab: usize) -> Result<Self> {
        let data = |message: String| TrainError::Data {
            path: path.to_path_buf(),
            message,
        };
        let f = SafetensorsFile::open(path)?;
        let t: &HostTensor = f.get("input_ids").ok_or_else(|| {
            data(format!(
                "no tensor `input_ids` (found: {})",
                f.names().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if !t.dtype().is_int() || t.shape().rank() != 3 {
            return Err(data(format!(
                "`input_ids` must be an integer tensor [steps, batch, seq_len + 1], found {} {}",
                t.dtype(),
                t.shape()
            )));
        }
        let d = t.dims();
        if d[0] == 0 || d[1] == 0 || d[2] < 2 {
            return Err(data(format!(
                "`input_ids` {} needs at least one step, one row and 2 tokens per row",
                t.shape()
            )));
        }
        let ids: Vec<i32> = t
            .to_f64_vec()
            .into_iter()
            .map(|v| v.clamp(i32::MIN as f64, i32::MAX as f64) as i32)
            .collect();
        check_ids(&ids, vocab, path)?;
        Ok(BatchFile {
            path: path.to_path_buf(),
            dims: [d[0], d[1], d[2]],
            ids,
        })
    }
}

impl Batches for BatchFile {
    fn batch(&self) -> usize {
        self.dims[1]
    }
    fn seq_len(&self) -> usize {
        self.dims[2] - 1
    }
    fn steps(&self) -> Option<u64> {
        Some(self.dims[0] as u64)
    }
    fn get(&self, s: u64) -> Result<Vec<i32>> {
        let n = self.dims[1] * self.dims[2];
        let s = s as usize;
        if s >= self.dims[0] {
            return Err(TrainError::Data {
                path: self.path.clone(),
                message: format!(
                    "step {s} requested but the file holds {} steps",
                    self.dims[0]
                ),
            });
        }
        Ok(self.ids[s * n..(s + 1) * n].to_vec())
    }
}

pub struct PackedText {
    windows: Vec<Vec<i32>>,
    batch: usize,
    seq_len: usize,
    seed: u64,
}

impl PackedText {
    /// Cuts `tokens` into windows of `seq_len + 1` (a short tail is dropped).
    pub fn new(
        tokens: &[u32],
        batch: usize,
        seq_len: usize,
        seed: u64,
        path: &Path,
    ) -> Result<Self> {
        let w = seq_len + 1;
        let windows: Vec<Vec<i32>> = tokens
            .chunks_exact(w)
            .map(|c| c.iter().map(|&t| t as i32).collect())
            .collect();
        if windows.len() < batch || batch == 0 {
            return Err(TrainError::Data {
                path: path.to_path_buf(),
                message: format!(
                    "{} tokens make {} windows of {w} tokens, fewer than the batch of {batch}: use more text, a smaller --seq-len or --batch",
                    tokens.len(),
                    windows.len()
                ),
            });
        }
        Ok(PackedText {
            windows,
            batch,
            seq_len,
            seed,
        })
    }

    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.windows.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        idx.shuffle(&mut rng);
        idx
    }
}

impl Batches for PackedText {
    fn batch(&self) -> usize {
        self.batch
    }
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn steps(&self) -> Option<u64> {
        None
    }
    fn get(&self, s: u64) -> Result<Vec<i32>> {
        let n = self.windows.len() as u64;
        let mut out = Vec::with_capacity(self.batch * (self.seq_len + 1));
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for r in 0..self.batch as u64 {
            let k = s * self.batch as u64 + r;
            let (epoch, i) = (k / n, (k % n) as usize);
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                cached = Some((epoch, self.order(epoch)));
            }
            let order = &cached.as_ref().expect("set above").1;
            out.extend_from_slice(&self.windows[order[i]]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_text_is_deterministic_and_covers_every_window_per_epoch() {
        let toks: Vec<u32> = (0..100).collect();
        let p = PackedText::new(&toks, 3, 4, 7, Path::new("x")).unwrap();
        assert_eq!(p.windows(), 20);
        let mut firsts = Vec::new();
        for s in 0..20 {
            let b = p.get(s).unwrap();
            assert_eq!(b.len(), 15);
            for r in 0..3 {
                let row = &b[r * 5..r * 5 + 5];
                assert!(row.windows(2).all(|w| w[1] == w[0] + 1), "{row:?}");
                firsts.push(row[0]);
            }
        }
        // 60 rows = 3 epochs of 20 windows: each epoch a permutation.
        for e in 0..3 {
            let mut ep: Vec<i32> = firsts[e * 20..e * 20 + 20].to_vec();
            ep.sort();
            assert_eq!(ep, (0..20).map(|i| i * 5).collect::<Vec<_>>());
        }
        let q = PackedText::new(&toks, 3, 4, 7, Path::new("x")).unwrap();
        assert_eq!(p.get(5).unwrap(), q.get(5).unwrap());
        let other = PackedText::new(&toks, 3, 4, 8, Path::new("x")).unwrap();
        assert_ne!(
            (0..4).map(|s| p.get(s).unwrap()).collect::<Vec<_>>(),
            (0..4).map(|s| other.get(s).unwrap()).collect::<Vec<_>>()
        );
        assert!(PackedText::new(&toks[..9], 2, 4, 7, Path::new("x")).is_err());
    }
}
