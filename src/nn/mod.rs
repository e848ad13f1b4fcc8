//! Building blocks below both training and the metrics' feature network: the Adam optimizer
//! and the checkpoint file format.

pub mod checkpoint;
pub mod optim;
