//! Reports over finished sweeps: find the runs ([`collect()`]), pivot their final metrics over
//! seeds into paper tables ([`table`]: LaTeX, Markdown, CSV, Parquet), draw figures
//! ([`plot`]), and put runs side by side on one HTML page ([`compare`]). Reports only read
//! run dirs; what they write goes where `--out` says.

pub mod collect;
pub mod compare;
pub mod format;
pub mod plot;
pub mod table;

pub use collect::{collect, Collection, Run};
