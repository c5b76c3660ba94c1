//! rlhf-train
