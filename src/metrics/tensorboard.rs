//! The TensorBoard sink: event files under `<run>/tb/`, written through tensorboard-rs.
//!
//! tensorboard-rs is wrapped here, and only here, because it falls short in two ways:
//! - it panics on I/O errors (its writer thread `expect`s every write; its handle `expect`s
//!   every send), so every call into it runs under `catch_unwind`, and the first failure is
//!   returned as an error (the [`SinkSet`](super::sink::SinkSet) then switches TensorBoard off
//!   for the rest of the run instead of losing the run);
//! - it has neither text nor HParams summaries, so those are built here from its protos and
//!   written through its public `FileWriter::add_summary`: the text plugin's string tensor, and
//!   the HParams plugin's experiment, session-start and session-end summaries exactly as
//!   PyTorch's `SummaryWriter.add_hparams` writes them, so TensorBoard's HParams tab lists every
//!   run of a sweep with its hyperparameters and final metrics.
//!
//! A resumed attempt first writes a `SessionLog START` event at the first step it will
//! record, which makes TensorBoard's loaders drop what the killed attempt logged past its
//! checkpoint (the steps that are trained again).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use protobuf::{Message, RepeatedField};
use tensorboard_proto::api::{DataType as HpType, Experiment, HParamInfo, MetricInfo, MetricName, Status};
use tensorboard_proto::event::{Event, SessionLog, SessionLog_SessionStatus};
use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionEndInfo, SessionStartInfo};
use tensorboard_proto::plugin_text::TextPluginData;
use tensorboard_proto::summary::{Summary, SummaryMetadata, SummaryMetadata_PluginData, Summary_Image, Summary_Value};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::tensor_shape::{TensorShapeProto, TensorShapeProto_Dim};
use tensorboard_proto::types::DataType;
use tensorboard_rs::summary_writer::FileWriter;

use super::sink::{RunStart, Sink};

pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
pub const SESSION_START_TAG: &str = "_hparams_/session_start_info";
pub const SESSION_END_TAG: &str = "_hparams_/session_end_info";

pub struct TensorBoardSink {
    dir: PathBuf,
    writer: Option<FileWriter>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "an I/O error in tensorboard-rs".to_string())
}

impl TensorBoardSink {
    /// Open a new event file in `<run_dir>/tb/`.
    pub fn open(run_dir: &Path) -> anyhow::Result<Self> {
        let dir = crate::rundir::RunDir::new(run_dir).tensorboard_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // tensorboard-rs creates its file on a thread that panics if it cannot: check first.
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"").with_context(|| format!("{} is not writable", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let d = dir.clone();
        let writer = catch_unwind(move || FileWriter::new(d))
            .map_err(|p| anyhow!("opening an event file in {}: {}", dir.display(), panic_message(p)))?;
        Ok(TensorBoardSink { dir, writer: Some(writer) })
    }

    fn call<R>(&mut self, f: impl FnOnce(&mut FileWriter) -> R) -> anyhow::Result<R> {
        let w = self.writer.as_mut().ok_or_else(|| anyhow!("the event writer was closed after an error"))?;
        match catch_unwind(AssertUnwindSafe(|| f(w))) {
            Ok(r) => Ok(r),
            Err(p) => {
                self.close_quietly();
                Err(anyhow!("writing an event file in {}: {}", self.dir.display(), panic_message(p)))
            }
        }
    }

    /// Drop the writer; its destructor also panics when its thread died.
    fn close_quietly(&mut self) {
        if let Some(w) = self.writer.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(w)));
        }
    }

    fn add(&mut self, summary: Summary, step: u64) -> anyhow::Result<()> {
        self.call(|w| w.add_summary(summary, step as usize))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.call(|w| w.flush())
    }
}

impl Drop for TensorBoardSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.call(|w| w.flush());
        }
        self.close_quietly();
    }
}

fn one_value(value: Summary_Value) -> Summary {
    let mut s = Summary::new();
    s.set_value(RepeatedField::from_vec(vec![value]));
    s
}

fn plugin_metadata(plugin: &str, content: Vec<u8>) -> SummaryMetadata {
    let mut pd = SummaryMetadata_PluginData::new();
    pd.set_plugin_name(plugin.to_string());
    pd.set_content(content);
    let mut md = SummaryMetadata::new();
    md.set_plugin_data(pd);
    md
}

fn shape(dims: &[i64]) -> TensorShapeProto {
    let mut s = TensorShapeProto::new();
    s.set_dim(RepeatedField::from_vec(
        dims.iter()
            .map(|&n| {
                let mut d = TensorShapeProto_Dim::new();
                d.set_size(n);
                d
            })
            .collect(),
    ));
    s
}

/// The text plugin's summary: a rank-1 string tensor with one Markdown element.
pub fn text_summary(tag: &str, markdown: &str) -> anyhow::Result<Summary> {
    let mut content = TextPluginData::new();
    content.set_version(0);
    let mut tensor = TensorProto::new();
    tensor.set_dtype(DataType::DT_STRING);
    tensor.set_tensor_shape(shape(&[1]));
    tensor.set_string_val(RepeatedField::from_vec(vec![markdown.as_bytes().to_vec()]));
    let mut v = Summary_Value::new();
    v.set_tag(tag.to_string());
    v.set_metadata(plugin_metadata("text", content.write_to_bytes()?));
    v.set_tensor(tensor);
    Ok(one_value(v))
}

/// An HParams plugin summary: tag and plugin data, with the empty float tensor TensorBoard's
/// own writers attach (PyTorch omits it; TensorBoard's loaders accept both).
fn hparams_summary(tag: &str, data: HParamsPluginData) -> anyhow::Result<Summary> {
    let mut tensor = TensorProto::new();
    tensor.set_dtype(DataType::DT_FLOAT);
    tensor.set_tensor_shape(shape(&[0]));
    let mut v = Summary_Value::new();
    v.set_tag(tag.to_string());
    v.set_metadata(plugin_metadata("hparams", data.write_to_bytes()?));
    v.set_tensor(tensor);
    Ok(one_value(v))
}

fn hp_value(v: &serde_json::Value) -> (protobuf::well_known_types::Value, HpType) {
    let mut out = protobuf::well_known_types::Value::new();
    let ty = match v {
        serde_json::Value::Bool(b) => {
            out.set_bool_value(*b);
            HpType::DATA_TYPE_BOOL
        }
        serde_json::Value::Number(n) => {
            out.set_number_value(n.as_f64().unwrap_or(f64::NAN));
            HpType::DATA_TYPE_FLOAT64
        }
        serde_json::Value::String(s) => {
            out.set_string_value(s.clone());
            HpType::DATA_TYPE_STRING
        }
        other => {
            out.set_string_value(other.to_string());
            HpType::DATA_TYPE_STRING
        }
    };
    (out, ty)
}

/// The experiment summary: every hyperparameter with its type, and the metrics to show.
pub fn experiment_summary(run: &RunStart) -> anyhow::Result<Summary> {
    let mut exp = Experiment::new();
    exp.set_hparam_infos(RepeatedField::from_vec(
        run.hparams
            .iter()
            .map(|(k, v)| {
                let mut info = HParamInfo::new();
                info.set_name(k.clone());
                info.set_field_type(hp_value(v).1);
                info
            })
            .collect(),
    ));
    exp.set_metric_infos(RepeatedField::from_vec(
        run.metrics
            .iter()
            .map(|m| {
                let mut name = MetricName::new();
                name.set_tag(m.clone());
                let mut info = MetricInfo::new();
                info.set_name(name);
                info
            })
            .collect(),
    ));
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_experiment(exp);
    hparams_summary(EXPERIMENT_TAG, data)
}

pub fn session_start_summary(run: &RunStart) -> anyhow::Result<Summary> {
    let mut info = SessionStartInfo::new();
    for (k, v) in &run.hparams {
        info.mut_hparams().insert(k.clone(), hp_value(v).0);
    }
    info.set_start_time_secs(run.start_time);
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_session_start_info(info);
    hparams_summary(SESSION_START_TAG, data)
}

pub fn session_end_summary(success: bool) -> anyhow::Result<Summary> {
    let mut info = SessionEndInfo::new();
    info.set_status(if success { Status::STATUS_SUCCESS } else { Status::STATUS_FAILURE });
    info.set_end_time_secs(crate::util::unix_now());
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_session_end_info(info);
    hparams_summary(SESSION_END_TAG, data)
}

impl Sink for TensorBoardSink {
    fn name(&self) -> &'static str {
        "TensorBoard"
    }

    fn essential(&self) -> bool {
        false
    }

    fn start(&mut self, run: &RunStart) -> anyhow::Result<()> {
        if run.resume_step > 0 {
            let mut log = SessionLog::new();
            log.set_status(SessionLog_SessionStatus::START);
            let mut ev = Event::new();
            ev.set_session_log(log);
            let step = run.resume_step as usize + 1;
            self.call(|w| w.add_event(&ev, step))?;
        }
        self.add(experiment_summary(run)?, 0)?;
        self.add(session_start_summary(run)?, 0)?;
        let text = format!(
            "Resolved config (the run's config file):\n\n{}",
            run.config_toml.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
        );
        self.add(text_summary("config", &text)?, 0)?;
        self.flush()
    }

    fn scalar(&mut self, step: u64, name: &str, value: f64) -> anyhow::Result<()> {
        self.add(tensorboard_rs::summary::scalar(name, value as f32), step)
    }

    fn image(&mut self, step: u64, tag: &str, png: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
        let mut img = Summary_Image::new();
        img.set_width(width as i32);
        img.set_height(height as i32);
        img.set_colorspace(3);
        img.set_encoded_image_string(png.to_vec());
        let mut v = Summary_Value::new();
        v.set_tag(tag.to_string());
        v.set_image(img);
        self.add(one_value(v), step)
    }

    /// One bucket per code index: bucket k holds n_k (values are code indices weighted by use).
    fn histogram(&mut self, step: u64, tag: &str, counts: &[u64]) -> anyhow::Result<()> {
        let used: Vec<usize> = (0..counts.len()).filter(|&k| counts[k] > 0).collect();
        let num: f64 = counts.iter().map(|&c| c as f64).sum();
        let sum: f64 = counts.iter().enumerate().map(|(k, &c)| k as f64 * c as f64).sum();
        let sum_sq: f64 = counts.iter().enumerate().map(|(k, &c)| (k as f64).powi(2) * c as f64).sum();
        let limits: Vec<f64> = (0..counts.len()).map(|k| k as f64 + 0.5).collect();
        let buckets: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let min = used.first().map(|&k| k as f64).unwrap_or(0.0);
        let max = used.last().map(|&k| k as f64).unwrap_or(0.0);
        let summary = tensorboard_rs::summary::histogram_raw(tag, min, max, num, sum, sum_sq, &limits, &buckets);
        self.add(summary, step)
    }

    fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.flush()
    }

    fn end(&mut self, step: u64, success: bool) -> anyhow::Result<()> {
        self.add(session_end_summary(success)?, step)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_tensorboard_rs_is_an_error_and_closes_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::open(dir.path()).unwrap();
        sink.scalar(1, "train/rec_loss", 0.5).unwrap();
        let err = sink.call(|_| -> () { panic!("write error") }).unwrap_err();
        assert!(format!("{err}").contains("write error"), "{err}");
        // Closed after the failure: later calls fail cleanly instead of panicking.
        assert!(sink.scalar(2, "train/rec_loss", 0.4).is_err());
        drop(sink);
    }

    #[test]
    fn an_unwritable_log_dir_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            crate::rundir::RunDir::new(dir.path()).tensorboard_dir(),
            b"a file where the directory should be",
        )
        .unwrap();
        assert!(TensorBoardSink::open(dir.path()).is_err());
    }
}
