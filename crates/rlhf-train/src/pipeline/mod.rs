//! `rlhf train`: one stage or a pipeline of stages on the user's own models and data.
//!
//! [`spec`] reads the file, [`inputs`] turns its keys into models, tokenizer, template and data,
//! [`run`] drives the stages (resume, skip, export) and [`report`] writes `report.md` (with
//! [`compare`]'s comparison of evaluated policies when there is one);
//! [`judge`] holds the held-out scorers; [`synthetic`], [`pairs`] and [`scratch`] serve the
//! stages that write data, label pairs and draw models from scratch (the built-in study);
//! [`best_of_n`] measures Gao et al.'s best-of-n curve and [`fit`] fits their functional forms.

pub mod best_of_n;
pub mod claims;
pub mod compare;
pub mod fit;
pub mod inputs;
pub mod judge;
pub mod pairs;
pub mod quick;
pub mod report;
pub mod run;
pub mod scratch;
pub mod spec;
pub mod svg;
pub mod synthetic;

pub use run::{JUDGE_AS_REWARD, PipelineOutput, TrainOptions, run_pipeline};
pub use spec::{PipelineSpec, StageInputs, StageSpec, load_pipeline, parse_pipeline};
