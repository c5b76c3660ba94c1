//! Batching: a deterministic shuffling batcher over example indices ([`Batcher`]) and padding
//! of token-id lists into rectangular batches with real-token masks ([`pad_batch`]).
//!
//! Invariant: batches are a pure function of `(n, batch_size, drop_last, seed, epoch)`; every
//! epoch visits each index exactly once (the last, short batch is dropped only with
//! `drop_last`).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Yields shuffled index batches per epoch.
///
/// Epoch `e` is a uniform permutation of `0..n` drawn by a ChaCha8 generator seeded with
/// `seed` on stream `e`, cut into consecutive batches of `batch_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batcher {
    n: usize,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
}

impl Batcher {
    /// A batcher over `n` examples.
    ///
    /// # Panics
    /// If `batch_size == 0` (a programming error).
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        assert!(batch_size > 0, "Batcher: batch_size must be positive");
        Self {
            n,
            batch_size,
            seed,
            drop_last: false,
        }
    }

    /// Whether to drop a last batch shorter than `batch_size` (default `false`).
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// The permutation of `0..n` for `epoch`.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut idx: Vec<usize> = (0..self.n).collect();
        idx.shuffle(&mut rng);
        idx
    }

    /// The index batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let perm = self.permutation(epoch);
        let mut batches: Vec<Vec<usize>> = perm
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if self.drop_last && batches.last().is_some_and(|b| b.len() < self.batch_size) {
            batches.pop();
        }
        batches
    }
}

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadSide {
    /// Pads before the ids (prompts for generation: every row ends at the same column).
    Left,
    /// Pads after the ids (training sequences).
    Right,
}

/// A padded batch, row-major: `ids[r * len + c]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padded {
    /// Token ids, `batch * len`.
    pub ids: Vec<u32>,
    /// `true` at real tokens, `false` at padding, `batch * len`.
    pub mask: Vec<bool>,
    /// Number of rows.
    pub batch: usize,
    /// Row length: the longest input (or `min_len` if larger).
    pub len: usize,
}

impl Padded {
    /// Row `r`'s ids.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.ids[r * self.len..(r + 1) * self.len]
    }

    /// Row `r`'s mask.
    pub fn row_mask(&self, r: usize) -> &[bool] {
        &self.mask[r * self.len..(r + 1) * self.len]
    }
}

/// Pads `seqs` with `pad_id` on `side` to the longest sequence, or to `min_len` if that is
/// longer.
pub fn pad_batch<S: AsRef<[u32]>>(
    seqs: &[S],
    pad_id: u32,
    side: PadSide,
    min_len: usize,
) -> Padded {
    let len = seqs
        .iter()
        .map(|s| s.as_ref().len())
        .max()
        .unwrap_or(0)
        .max(min_len);
    let mut ids = Vec::with_capacity(seqs.len() * len);
    let mut mask = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        let s = s.as_ref();
        let pad = len - s.len();
        if side == PadSide::Left {
            ids.extend(std::iter::repeat_n(pad_id, pad));
            mask.extend(std::iter::repeat_n(false, pad));
        }
        ids.extend_from_slice(s);
        mask.extend(std::iter::repeat_n(true, s.len()));
        if side == PadSide::Right {
            ids.extend(std::iter::repeat_n(pad_id, pad));
            mask.extend(std::iter::repeat_n(false, pad));
        }
    }
    Padded {
        ids,
        mask,
        batch: seqs.len(),
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_is_deterministic_and_covers_every_index() {
        let b = Batcher::new(10, 3, 42);
        assert_eq!(b.num_batches(), 4);
        let e0 = b.epoch(0);
        assert_eq!(e0, Batcher::new(10, 3, 42).epoch(0));
        assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let mut all: Vec<usize> = e0.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(b.epoch(1), e0, "epochs reshuffle");
        assert_ne!(Batcher::new(10, 3, 43).epoch(0), e0, "seeds differ");
        let d = b.clone().drop_last(true);
        assert_eq!(d.num_batches(), 3);
        assert_eq!(d.epoch(0), e0[..3]);
        assert!(Batcher::new(0, 4, 0).epoch(0).is_empty());
    }

    #[test]
    fn padding_both_sides() {
        let seqs = vec![vec![5, 6, 7], vec![8]];
        let l = pad_batch(&seqs, 0, PadSide::Left, 0);
        assert_eq!((l.batch, l.len), (2, 3));
        assert_eq!(l.ids, [5, 6, 7, 0, 0, 8]);
        assert_eq!(l.mask, [true, true, true, false, false, true]);
        let r = pad_batch(&seqs, 9, PadSide::Right, 4);
        assert_eq!(r.len, 4);
        assert_eq!(r.row(1), [8, 9, 9, 9]);
        assert_eq!(r.row_mask(0), [true, true, true, false]);
        let empty: Vec<Vec<u32>> = Vec::new();
        assert_eq!(pad_batch(&empty, 0, PadSide::Right, 0).ids.len(), 0);
    }
}
