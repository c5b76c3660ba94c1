//! Host-side attention masks: which positions of a batch hold real tokens.
//!
//! The mask lives on the host because batches are built there and because positions, the last
//! real token and the attention pattern are cheap to derive from it exactly, on every backend
//! alike.

use burn::prelude::*;

/// `[B, T]` flags, true where the token is real and false where it is padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionMask {
    batch: usize,
    len: usize,
    real: Vec<bool>,
}

impl AttentionMask {
    /// A mask from row-major flags.
    ///
    /// # Panics
    /// If `real.len() != batch * len`.
    pub fn new(batch: usize, len: usize, real: Vec<bool>) -> Self {
        assert_eq!(real.len(), batch * len, "mask data must be batch * len");
        Self { batch, len, real }
    }

    /// Every position real.
    pub fn full(batch: usize, len: usize) -> Self {
        Self::new(batch, len, vec![true; batch * len])
    }

    /// Real where `ids[i] != pad_id`.
    pub fn from_ids(ids: &[Vec<u32>], pad_id: u32) -> Self {
        let len = ids.first().map_or(0, Vec::len);
        let mut real = Vec::with_capacity(ids.len() * len);
        for row in ids {
            assert_eq!(row.len(), len, "all rows must have the same length");
            real.extend(row.iter().map(|&t| t != pad_id));
        }
        Self::new(ids.len(), len, real)
    }

    /// Left-padded mask for rows of the given lengths, padded to `len`.
    pub fn left_padded(lengths: &[usize], len: usize) -> Self {
        let mut real = Vec::with_capacity(lengths.len() * len);
        for &l in lengths {
            assert!(l <= len, "row length {l} exceeds {len}");
            real.extend((0..len).map(|j| j >= len - l));
        }
        Self::new(lengths.len(), len, real)
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of positions.
    pub fn seq_len(&self) -> usize {
        self.len
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[bool] {
        &self.real[i * self.len..(i + 1) * self.len]
    }

    /// The flags, row-major.
    pub fn as_slice(&self) -> &[bool] {
        &self.real
    }

    /// This mask followed by `other` along the time axis.
    pub fn concat(&self, other: &AttentionMask) -> AttentionMask {
        assert_eq!(self.batch, other.batch);
        let len = self.len + other.len;
        let mut real = Vec::with_capacity(self.batch * len);
        for i in 0..self.batch {
            real.extend_from_slice(self.row(i));
            real.extend_from_slice(other.row(i));
        }
        Self::new(self.batch, len, real)
    }

    /// Keeps the given rows, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> AttentionMask {
        let mut real = Vec::with_capacity(rows.len() * self.len);
        for &r in rows {
            real.extend_from_slice(self.row(r));
        }
        Self::new(rows.len(), self.len, real)
    }

    /// Position ids of the last `t` positions: the number of real tokens before each one
    /// (HF's `cumsum(mask) - 1`, padding clamped to 0), as f32 row-major `[B, t]`.
    pub fn positions_of_last(&self, t: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.batch * t);
        for i in 0..self.batch {
            let mut count = 0usize;
            for (j, &r) in self.row(i).iter().enumerate() {
                let pos = if r { count } else { count.saturating_sub(1) };
                if r {
                    count += 1;
                }
                if j >= self.len - t {
                    out.push(pos as f32);
                }
            }
        }
        out
    }

    /// Index of the last real token of each row.
    ///
    /// # Panics
    /// If a row has no real token.
    pub fn last_real_index(&self) -> Vec<usize> {
        (0..self.batch)
            .map(|i| {
                self.row(i)
                    .iter()
                    .rposition(|&r| r)
                    .unwrap_or_else(|| panic!("row {i} of the mask has no real token"))
            })
            .collect()
    }

    /// Number of real tokens per row.
    pub fn lengths(&self) -> Vec<usize> {
        (0..self.batch)
            .map(|i| self.row(i).iter().filter(|&&r| r).count())
            .collect()
    }

    /// The boolean attention mask `[B, heads, t, T]` for the last `t` positions as queries and
    /// all `T` positions as keys; true means "do not attend". A query attends to real keys at
    /// or before it. Every query may attend to itself, so that no row is fully masked (padding
    /// queries would otherwise give NaN); padding keys are never seen by real queries.
    pub fn attention_bool(&self, t: usize, heads: usize, device: &Device) -> Tensor<4, Bool> {
        let kl = self.len;
        let off = kl - t;
        let mut data = Vec::with_capacity(self.batch * t * kl);
        for i in 0..self.batch {
            let row = self.row(i);
            for q in 0..t {
                let qa = q + off;
                for (k, &real) in row.iter().enumerate() {
                    let allowed = k == qa || (k < qa && real);
                    data.push(!allowed);
                }
            }
        }
        Tensor::<4, Bool>::from_data(TensorData::new(data, [self.batch, 1, t, kl]), device)
            .expand([self.batch, heads, t, kl])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_real_tokens_only() {
        let m = AttentionMask::left_padded(&[3, 5], 5);
        assert_eq!(
            m.positions_of_last(5),
            vec![0., 0., 0., 1., 2., 0., 1., 2., 3., 4.]
        );
        assert_eq!(m.positions_of_last(2), vec![1., 2., 3., 4.]);
        assert_eq!(m.last_real_index(), vec![4, 4]);
        assert_eq!(m.lengths(), vec![3, 5]);
        let grown = m.concat(&AttentionMask::full(2, 1));
        assert_eq!(grown.positions_of_last(1), vec![3., 5.]);
    }

    #[test]
    fn right_padding_last_index() {
        let m = AttentionMask::from_ids(&[vec![5, 6, 0, 0], vec![1, 2, 3, 4]], 0);
        assert_eq!(m.last_real_index(), vec![1, 3]);
    }
}
