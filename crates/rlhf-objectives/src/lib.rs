//! rlhf-objectives: the mathematics of preference optimisation and RLHF as functions of
//! log-probs and logits, generic over the burn [`Device`](burn::prelude::Device).
//!
//! It owns: sequence quantities ([`sequence`]: masked token log-probs, entropy, exact KL and the
//! k1/k2/k3 estimators), the offline preference objectives ([`preference`]: DPO and its
//! relatives, SimPO, MaxEnt Bradley–Terry, ORPO, Plackett–Luce), the reward-model loss
//! ([`reward_model`]), the online regularisers and rewards ([`online`]), advantage estimators
//! ([`advantage`]), the PPO losses ([`ppo`]) and a numerical check of the theory ([`theory`]).
//!
//! Architecture invariant: this crate never sees a model, a tokenizer or a file. Its inputs are
//! tensors of logits or log-probs (or plain numbers), its outputs are losses with autodiff history
//! and detached metrics; it depends on burn and serde only. Shape mismatches are programmer
//! errors and panic.

pub mod advantage;
pub mod online;
pub mod ppo;
pub mod preference;
pub mod reward_model;
pub mod sequence;
pub mod theory;

#[cfg(test)]
mod test_util;

pub use advantage::{Gae, gae, group_normalized_advantages, rloo_advantages, whiten};
pub use online::{
    EntropyBonus, KlPenalty, RegularizedReward, Regularizer, RewardInput, RewardPlacement,
    apply_missing_eos_penalty, last_token_onehot,
};
pub use ppo::{
    PolicyLossOutput, PpoConfig, ValueLossOutput, clipped_value_loss, policy_gradient_loss,
    ppo_clip_loss,
};
pub use preference::{
    ListwiseLoss, ListwiseOutput, PreferenceBatch, PreferenceLoss, PreferenceOutput, RankedBatch,
    SimpoMargin, plackett_luce_nll,
};
pub use reward_model::{RewardModelLoss, RewardModelOutput};
pub use sequence::{
    IntoMask, KlEstimator, SequenceLogps, entropy, kl_full_vocab, masked_mean, masked_sum,
    masked_token_logps, next_token_logps, token_logps,
};
pub use theory::{Bound, Claim, Section, TheoryReport};
