//! localrank's core: the fused offer-scoring kernel, top-k selection, int8 embeddings and the
//! kernel paths behind them, and the privacy mechanisms reports go through ([`ldp`]). Pure Rust,
//! no Python; the `localrank-py` crate binds it.
//!
//! The score of an eligible offer `i` is
//! `((w_dot·(u·E[i]) + bias[i]) + w_prior·prior[category[i]]) + adjust[i]`;
//! top-k sorts by score, highest first, with ties to the lower index.

pub mod error;
pub mod int8;
pub mod kernel;
pub mod ldp;
mod pass;
pub mod score;
pub mod topk;

pub use error::{Error, Result};
pub use int8::{quantize_int8, rescore_candidates, score_topk_int8};
pub use kernel::{stream_sum, stream_sum_i8, Kernel};
pub use score::{auto_threads, score_topk, Matrix, Options, Ranked, Terms};
