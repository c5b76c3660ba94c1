//! Pieces the trainers share: deterministic batch order, the gradient step with its guard, and
//! saving/loading a causal LM with its optimiser.

use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rlhf_model::{
    CausalLm, Checkpoint, HeadKind, WeightMap, is_partially_frozen, load_trainable_tensors,
    read_safetensors, save_hf, trainable_tensors, write_safetensors,
};

use crate::batch::scalar;
use crate::error::{TrainError, io};
use crate::optim::{Optimizer, global_grad_norm};
use crate::runner::check_finite;

/// SplitMix64: mixes a seed with stream indices into an independent seed.
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The example indices of batch `step`: epochs are seeded shuffles of `0..n`, and batch `step`
/// takes the next `batch` indices (wrapping into the next epoch). A function of (seed, step).
pub fn batch_indices(n: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    assert!(n > 0, "empty data set");
    let start = step * batch;
    let mut out = Vec::with_capacity(batch);
    let mut epoch = start / n;
    let mut perm = epoch_perm(n, seed, epoch);
    let mut pos = start % n;
    while out.len() < batch {
        if pos == n {
            epoch += 1;
            perm = epoch_perm(n, seed, epoch);
            pos = 0;
        }
        out.push(perm[pos]);
        pos += 1;
    }
    out
}

fn epoch_perm(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, 0xE90C, epoch as u64));
    v.shuffle(&mut rng);
    v
}

/// Backward, global grad norm, finiteness checks, clipping, optimiser step. Returns the new
/// module and (loss, grad_norm, lr).
pub fn optimise<M: Module>(
    stage: &str,
    step: usize,
    module: M,
    optim: &mut Optimizer,
    loss: Tensor<1>,
) -> Result<(M, f64, f64, f64), TrainError> {
    let loss_v = scalar(loss.clone());
    check_finite(stage, step, "loss", loss_v)?;
    let grads = loss.backward();
    let mut g = GradientsParams::from_grads(grads, &module);
    let norm = global_grad_norm(&module, &g).map(scalar).unwrap_or(0.0);
    check_finite(stage, step, "grad_norm", norm)?;
    optim.clip(&module, &mut g, norm);
    let lr = optim.lr(step);
    let module = optim.step(step, module, g);
    Ok((module, loss_v, norm, lr))
}

/// [`optimise`] on the module held in `slot` (a trainer's `Option<M>`): the updated module goes
/// back into the slot, and on an error (non-finite loss or gradient) the module as it was before
/// the step does, so that the trainer can still save or report it. Returns (loss, grad_norm, lr).
pub fn optimise_slot<M: Module>(
    stage: &str,
    step: usize,
    slot: &mut Option<M>,
    optim: &mut Optimizer,
    loss: Tensor<1>,
) -> Result<(f64, f64, f64), TrainError> {
    let module = slot.take().expect("model present");
    match optimise(stage, step, module.clone(), optim, loss) {
        Ok((updated, loss, norm, lr)) => {
            *slot = Some(updated);
            Ok((loss, norm, lr))
        }
        Err(e) => {
            *slot = Some(module);
            Err(e)
        }
    }
}

/// Refuses weights with a NaN or infinite value: an update that finished with a finite loss
/// and gradient norm can still leave a parameter non-finite (an absurd learning rate), and a
/// checkpoint of such weights would replace the last good one. The error's stage and step are
/// filled in by the runner.
pub fn check_weights_finite(map: &WeightMap) -> Result<(), TrainError> {
    match rlhf_model::first_non_finite(map) {
        None => Ok(()),
        Some((name, _, v)) => Err(TrainError::NonFinite {
            stage: String::new(),
            step: 0,
            quantity: format!("parameter {name}"),
            value: v as f64,
        }),
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Removes `p`, a file or a folder with everything in it; nothing to do when it is absent.
pub(crate) fn remove_path(p: &Path) -> Result<(), TrainError> {
    let r = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else if p.exists() {
        std::fs::remove_file(p)
    } else {
        Ok(())
    };
    r.map_err(io(p))
}

/// Every token id of `seqs` must be below `vocab_size`; `what` names the data in the error
/// (e.g. `"SFT example"`), `model` the model whose vocabulary it is.
pub fn check_token_ids<'a>(
    what: &str,
    model: &str,
    vocab_size: usize,
    seqs: impl IntoIterator<Item = (usize, &'a [u32])>,
) -> Result<(), TrainError> {
    for (i, ids) in seqs {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(TrainError::Mismatch {
                what: format!(
                    "{what} {i}: token id {t} is outside the {model}'s vocabulary of {vocab_size} \
                     (tokenizer and model do not match)"
                ),
            });
        }
    }
    Ok(())
}

/// Saves a causal LM (HF layout, adapters merged) and its optimiser into `dir`, and the
/// trainable tensors of a partially frozen model (LoRA, `train_layers`) by module path, which a
/// resumed run needs besides its rebuilt base. Fails with [`TrainError::NonFinite`] (and writes
/// nothing) when a weight is not finite.
pub fn save_policy(
    dir: &Path,
    model: &CausalLm,
    optim: Option<&Optimizer>,
) -> Result<(), TrainError> {
    let map = model.to_weight_map();
    check_weights_finite(&map)?;
    save_hf(&dir.join("model"), model.config(), HeadKind::CausalLm, &map)?;
    save_trainable(dir, model)?;
    if let Some(o) = optim {
        o.save(&dir.join("optimizer.bpk"))?;
    }
    Ok(())
}

/// The file of a checkpoint that holds a partially frozen model's trainable tensors.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";

/// Writes `model`'s trainable tensors to [`TRAINABLE_FILE`] in `dir` when some of its
/// parameters are frozen; nothing otherwise.
pub fn save_trainable<M: Module>(dir: &Path, model: &M) -> Result<(), TrainError> {
    if !is_partially_frozen(model) {
        return Ok(());
    }
    Ok(write_safetensors(
        &trainable_tensors(model),
        &dir.join(TRAINABLE_FILE),
    )?)
}

/// The model of a checkpoint in `dir` for a trainer whose model is now `current`: a fully
/// trainable model is the saved one (`load` reads it from `dir/model`); a partially frozen one
/// keeps its frozen base, which training never changes, and takes its trainable tensors from
/// [`TRAINABLE_FILE`].
pub fn reload_model<M: Module>(
    dir: &Path,
    current: M,
    load: impl FnOnce(&Path) -> Result<M, TrainError>,
) -> Result<M, TrainError> {
    if !is_partially_frozen(&current) {
        return load(&dir.join("model"));
    }
    let path = dir.join(TRAINABLE_FILE);
    let map = read_safetensors(&path)?;
    Ok(load_trainable_tensors(current, &map, &path)?)
}

/// Loads the causal LM of a checkpoint saved by [`save_policy`] into a trainer whose policy
/// is now `current` (see [`reload_model`]).
pub fn load_policy(dir: &Path, current: CausalLm) -> Result<CausalLm, TrainError> {
    let device = current.decoder.embed.val().device();
    reload_model(dir, current, |m| {
        Ok(Checkpoint::open(m)?.causal_lm(&device)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once_and_are_deterministic() {
        let n = 10;
        let mut seen: Vec<usize> = (0..5).flat_map(|s| batch_indices(n, 2, 7, s)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_indices(n, 3, 7, 4), batch_indices(n, 3, 7, 4));
        assert_ne!(batch_indices(n, 3, 7, 0), batch_indices(n, 3, 8, 0));
        assert_eq!(batch_indices(3, 5, 1, 0).len(), 5);
    }
}
