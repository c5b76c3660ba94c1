//! rlhf-rollout
