//! The stage-2 transformer's CPU ops, as candle custom ops with their own backward passes: a
//! linear layer (gemm on rayon's pool, bias fused), LayerNorm, GELU, causal multi-head
//! attention over the packed q/k/v matrix (with its dropout mask), and the mean cross-entropy.
//!
//! With candle's ops each of these is a chain of elementwise ops, every one a pass over memory
//! and a tensor in the graph (LayerNorm alone is eight forward and more backward); candle's
//! matmuls run on the calling thread under vqlab's `CANDLE_NUM_THREADS=1`; and its attention
//! needs transposed copies of q, k and v and materialises the masked scores, the softmax and
//! the dropped weights for every head. Here attention runs per image on one thread of the
//! pool, every head's scores in cache. A whole pre-LayerNorm block is also one op
//! ([`transformer_block`]): the same kernels in the same order, but one tensor of the graph
//! where the composed block has fifteen, each of which candle's backward pass zero-fills and
//! adds into.
//!
//! Work is split into chunks of a fixed number of rows, never by the thread count, so a result
//! is the same on any number of threads. (A weight gradient's rows are split among the
//! threads, but each of its elements is one sum over the rows in the gemm's fixed order,
//! whichever thread computes it.) Outputs that an op writes in full are written into fresh
//! capacity, without the zero-fill of `vec![0.0; n]` first. Other devices and `VQLAB_REFERENCE_OPS=1` take the
//! candle compositions (`*_reference`), which the tests check these against.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::conv::reference_forced;
use super::kernels::{self, MatRef};
use super::vecmath;
use crate::util::tensor::{cpu_f32, with_slices};

/// Rows one task of a row-wise op covers: fixed, so that results do not depend on the thread
/// count.
const ROWS: usize = 64;
/// Elements one task of an elementwise op covers.
const ELEMS: usize = 1 << 14;

fn fast(ts: &[&Tensor]) -> bool {
    !reference_forced() && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

fn dims2(d: &[usize], what: &str) -> Result<(usize, usize)> {
    match d {
        [r, c] => Ok((*r, *c)),
        _ => bail!("{what}: expected a 2-D tensor, got shape {d:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

/// x (…, in) · wᵀ + b with w (out, in) and b (out) — PyTorch's `Linear` on the rows of x's
/// last dimension: (…, out). Taking (B, T, in) as it is spares the graph the reshapes to and
/// from rows, each of which costs a pass in the backward pass (candle adds every gradient into
/// a zeroed tensor).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !fast(&[x, w]) || b.is_some_and(|b| !fast(&[b])) {
        return linear_reference(x, w, b);
    }
    let b = match b {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(0, DType::F32, x.device())?,
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b, LinearOp)
}

/// The same with candle's ops.
pub fn linear_reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

struct LinearOp;

/// (rows, in) of x (…, in): every dimension but the last is rows.
fn rows_of(d: &[usize], what: &str) -> Result<(usize, usize)> {
    match d.split_last() {
        Some((&inp, lead)) if !lead.is_empty() => Ok((lead.iter().product(), inp)),
        _ => bail!("{what}: expected rows (…, in) of at least 2 dimensions, got shape {d:?}"),
    }
}

/// What a linear layer ran on, for the profile: "in → out, N rows".
fn linear_label(x: &[usize], w: &[usize]) -> String {
    match (rows_of(x, ""), w) {
        (Ok((n, inp)), [out, _]) => format!("{inp} → {out}, {n} rows"),
        _ => format!("{x:?} · {w:?}ᵀ"),
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "vqlab-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let layer = || linear_label(l1.dims(), l2.dims());
        crate::util::profile::time_detailed("linear forward", layer, || {
            let (x, w, b) =
                (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
            let (n, inp, out, shape) = linear_dims(self.name(), l1.dims(), l2.dims(), b.len())?;
            Ok((CpuStorage::F32(linear_rows(x, w, b, n, inp, out)), shape))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let layer = || linear_label(x.dims(), w.dims());
        crate::util::profile::time_detailed("linear backward", layer, || {
            with_slices([dy], |[dys]| linear_grads(x, w, b, dys))
        })
    }
}

/// (rows, in, out) of a linear layer's x (…, in) and w (out, in) with a bias of `bias`
/// elements (0: none), and the shape of its output (…, out).
fn linear_dims(name: &str, x: &[usize], w: &[usize], bias: usize) -> Result<(usize, usize, usize, Shape)> {
    let (n, inp) = rows_of(x, name)?;
    let (out, win) = dims2(w, name)?;
    if win != inp || (bias != 0 && bias != out) {
        bail!("{name}: x {x:?}, weight {w:?}, bias of {bias} elements");
    }
    let mut shape = x.to_vec();
    *shape.last_mut().expect("rows_of checked the rank") = out;
    Ok((n, inp, out, Shape::from(shape)))
}

/// A linear layer's gradients (x's only when it needs one: inputs that are not variables and
/// come from no op, as code embeddings do, need none) from the rows of dy.
#[allow(clippy::type_complexity)]
fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    dys: &[f32],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (n, inp) = rows_of(x.dims(), "vqlab-linear")?;
    let out = w.dim(0)?;
    if dys.len() != n * out {
        bail!("vqlab-linear: a gradient of {} elements for {n} rows of {out}", dys.len());
    }
    let (has_bias, need_x) = (b.elem_count() > 0, x.track_op());
    let (dx, dw, db) =
        with_slices([x, w], |[xs, ws]| Ok(linear_rows_backward(xs, ws, dys, n, inp, out, has_bias, need_x)))?;
    let dev = x.device();
    let db = if has_bias { Some(Tensor::from_vec(db, out, dev)?) } else { None };
    let dx = if need_x { Some(Tensor::from_vec(dx, x.shape(), dev)?) } else { None };
    Ok((dx, Some(Tensor::from_vec(dw, (out, inp), dev)?), db))
}

/// gelu(x · wᵀ + b): a linear layer and the GELU after it (the MLP's first half) as one op, so
/// that the graph holds one node where it held two (the linear output, 4× the width, costs a
/// zero-fill and an add of its own in candle's backward pass) and the GELU runs on the gemm's
/// output as it lands. The same numbers, bit for bit, as `gelu(&linear(x, w, b)?)`.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !fast(&[x, w]) || b.is_some_and(|b| !fast(&[b])) {
        return linear_reference(x, w, b)?.gelu_erf();
    }
    let b = match b {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(0, DType::F32, x.device())?,
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b, LinearGeluOp { derivative: Kept::new() })
}

/// What a fused op keeps from its forward pass for its backward pass (the graph holds only the
/// op's output).
struct Kept<T>(std::sync::OnceLock<T>);

impl<T> Kept<T> {
    fn new() -> Self {
        Kept(std::sync::OnceLock::new())
    }

    fn keep(&self, v: T, op: &str) -> Result<()> {
        if self.0.set(v).is_err() {
            bail!("{op}: one op, one forward pass")
        }
        Ok(())
    }

    fn get(&self, op: &str) -> Result<&T> {
        match self.0.get() {
            Some(v) => Ok(v),
            None => bail!("{op}: backward pass before the forward pass"),
        }
    }
}

/// The fused op keeps GELU's derivative at its pre-activation x · wᵀ + b.
struct LinearGeluOp {
    derivative: Kept<Vec<f32>>,
}

impl CustomOp3 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "vqlab-linear-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        let (n, inp, out, shape) = linear_dims(self.name(), l1.dims(), l2.dims(), b.len())?;
        let (y, d) = gelu_forward_keeping_derivative(&linear_timed(x, w, b, n, inp, out));
        self.derivative.keep(d, self.name())?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.derivative.get(self.name())?;
        let (n, _) = rows_of(x.dims(), self.name())?;
        let out = w.dim(0)?;
        if d.len() != n * out || dy.elem_count() != n * out {
            bail!("{}: a gradient of {:?} for {n} rows of {out}", self.name(), dy.dims());
        }
        let dh = with_slices([dy], |[dys]| gelu_backward_by(d, dys))?;
        let layer = || linear_label(x.dims(), w.dims());
        crate::util::profile::time_detailed("linear backward", layer, || linear_grads(x, w, b, &dh))
    }
}

/// x (n × inp rows) · wᵀ (w: out × inp) + b (out, or empty): the linear layer's forward pass.
fn linear_rows(x: &[f32], w: &[f32], b: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
    let (xm, wt) = (MatRef::rows(x, inp), MatRef::rows(w, inp).t());
    if b.is_empty() {
        return kernels::gemm_parallel_new(n, out, inp, xm, wt);
    }
    // Each row starts as the bias, and the gemm adds x · wᵀ to it.
    // SAFETY: every row of every chunk is written.
    let mut y = unsafe {
        kernels::par_filled(n * out, ROWS * out, |_, rows| {
            for row in rows.chunks_mut(out) {
                row.iter_mut().zip(b).for_each(|(d, &v)| {
                    d.write(v);
                });
            }
        })
    };
    kernels::gemm_parallel(n, out, inp, xm, wt, &mut y, true);
    y
}

/// The linear layer's backward pass from dy (n × out): dx = dy · w (empty unless `need_x`),
/// dw = dyᵀ · x, db = Σ_rows dy (empty unless `has_bias`).
#[allow(clippy::too_many_arguments)]
fn linear_rows_backward(
    xs: &[f32],
    ws: &[f32],
    dys: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    has_bias: bool,
    need_x: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dx = if need_x {
        kernels::gemm_parallel_new(n, inp, out, MatRef::rows(dys, out), MatRef::rows(ws, inp))
    } else {
        Vec::new()
    };
    // dw is short and wide with a long k (the rows): split by its rows, and each part of the
    // pool also sums its stretch of db.
    let mut dw = vec![0.0f32; out * inp];
    let parts = rayon::current_num_threads().clamp(1, out.max(1));
    let per = out.div_ceil(parts).max(1);
    let dyt = MatRef::rows(dys, out).t();
    let mut db = vec![0.0f32; if has_bias { out } else { 0 }];
    let mut db_parts: Vec<&mut [f32]> =
        if has_bias { db.chunks_mut(per).collect() } else { (0..parts).map(|_| &mut [][..]).collect() };
    dw.par_chunks_mut(per * inp).zip(db_parts.par_iter_mut()).enumerate().for_each(|(i, (dwp, dbp))| {
        let o0 = i * per;
        let rows = dwp.len() / inp.max(1);
        let a = MatRef { data: &dyt.data[o0.min(dyt.data.len())..], rs: dyt.rs, cs: dyt.cs };
        kernels::gemm(rows, inp, n, a, MatRef::rows(xs, inp), dwp, false);
        if !dbp.is_empty() {
            for row in dys.chunks_exact(out) {
                dbp.iter_mut().zip(&row[o0..o0 + rows]).for_each(|(s, v)| *s += v);
            }
        }
    });
    (dx, dw, db)
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// PyTorch's LayerNorm over the last dimension (biased variance), then × gain + bias.
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !fast(&[x, gain, bias]) {
        return layer_norm_reference(x, gain, bias, eps);
    }
    x.contiguous()?.apply_op3(&gain.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: eps as f32 })
}

/// The same with candle's ops.
pub fn layer_norm_reference(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(gain)?.broadcast_add(bias)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vqlab-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        if l1.dims().last() != Some(&g.len()) {
            bail!("vqlab-layer-norm: x {:?} with gain of {} elements", l1.dims(), g.len())
        }
        Ok((CpuStorage::F32(layer_norm_forward(x, g, b, self.eps)?), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gain.elem_count();
        let (dx, dg, db) = with_slices([x, gain, dy], |[xs, gs, dys]| layer_norm_backward(xs, gs, dys, self.eps))?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dg, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// LayerNorm of the rows of x (each `g.len()` wide): the forward pass of [`layer_norm`].
fn layer_norm_forward(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> Result<Vec<f32>> {
    crate::util::profile::time("LayerNorm forward", || {
        let c = g.len();
        if c == 0 || b.len() != c || !x.len().is_multiple_of(c) {
            bail!("vqlab-layer-norm: {} elements of x with gain of {c} and bias of {} elements", x.len(), b.len());
        }
        // SAFETY: layer_norm_rows writes every element of its whole rows.
        Ok(unsafe {
            kernels::par_filled(x.len(), ROWS * c, |i, ys| {
                let mut centred = vec![0.0f32; c];
                vecmath::layer_norm_rows(&x[i * ROWS * c..][..ys.len()], g, b, eps, &mut centred, ys)
            })
        })
    })
}

/// LayerNorm's backward pass: (dx, dgain, dbias) from the rows of x and dy.
fn layer_norm_backward(xs: &[f32], gs: &[f32], dys: &[f32], eps: f32) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    crate::util::profile::time("LayerNorm backward", || {
        let c = gs.len();
        if c == 0 || !xs.len().is_multiple_of(c) || dys.len() != xs.len() {
            bail!("vqlab-layer-norm: a gradient of {} elements for {} of x, {c} wide", dys.len(), xs.len());
        }
        let mut dx = vec![0.0f32; xs.len()];
        // Per chunk: (Σ dy·x̂, Σ dy) over its rows, added up in chunk order.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(ROWS * c)
            .zip(xs.par_chunks(ROWS * c).zip(dys.par_chunks(ROWS * c)))
            .map(|(dxs, (xs, dys))| {
                let (mut dg, mut db, mut xhat) = (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
                vecmath::layer_norm_rows_backward(xs, gs, dys, eps, dxs, &mut dg, &mut db, &mut xhat);
                (dg, db)
            })
            .collect();
        let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
        for (pg, pb) in &partial {
            dg.iter_mut().zip(pg).for_each(|(s, v)| *s += v);
            db.iter_mut().zip(pb).for_each(|(s, v)| *s += v);
        }
        Ok((dx, dg, db))
    })
}

// ---------------------------------------------------------------------------------------------
// GELU

/// GELU with the exact erf: x · Φ(x).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !fast(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluOp)
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "vqlab-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(gelu_forward(cpu_f32(s, l, self.name())?)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_slices([x, dy], |[xs, dys]| gelu_backward(xs, dys))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// GELU of every element, in chunks of [`ELEMS`] on the pool.
fn gelu_forward(x: &[f32]) -> Vec<f32> {
    crate::util::profile::time("GELU forward", || {
        // SAFETY: gelu_forward writes every element of its chunk.
        unsafe { kernels::par_filled(x.len(), ELEMS, |i, ys| vecmath::gelu_forward(&x[i * ELEMS..][..ys.len()], ys)) }
    })
}

/// GELU of every element and its derivative there, for a layer whose backward pass is
/// [`gelu_backward_by`]: the same numbers as [`gelu_forward`] and [`gelu_backward`], one erf
/// per element fewer.
fn gelu_forward_keeping_derivative(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    crate::util::profile::time("GELU forward", || {
        let (mut y, mut d) = (Vec::with_capacity(x.len()), Vec::with_capacity(x.len()));
        y.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(ELEMS)
            .zip(d.spare_capacity_mut()[..x.len()].par_chunks_mut(ELEMS))
            .zip(x.par_chunks(ELEMS))
            .for_each(|((y, d), x)| vecmath::gelu_forward_and_derivative(x, y, d));
        // SAFETY: gelu_forward_and_derivative wrote every element of both.
        unsafe {
            y.set_len(x.len());
            d.set_len(x.len());
        }
        (y, d)
    })
}

/// GELU's backward pass from the kept derivative: dx = dy · d.
fn gelu_backward_by(d: &[f32], dys: &[f32]) -> Result<Vec<f32>> {
    if dys.len() != d.len() {
        bail!("vqlab-gelu: a gradient of {} elements for {}", dys.len(), d.len())
    }
    Ok(crate::util::profile::time("GELU backward", || {
        // SAFETY: every element of every chunk is written.
        unsafe {
            kernels::par_filled(d.len(), ELEMS, |i, dx| {
                let at = i * ELEMS;
                dx.iter_mut().zip(&d[at..]).zip(&dys[at..]).for_each(|((o, d), g)| {
                    o.write(g * d);
                });
            })
        }
    }))
}

/// GELU's backward pass: dx from x and dy (of x's length).
fn gelu_backward(xs: &[f32], dys: &[f32]) -> Result<Vec<f32>> {
    if dys.len() != xs.len() {
        bail!("vqlab-gelu: a gradient of {} elements for {}", dys.len(), xs.len())
    }
    Ok(crate::util::profile::time("GELU backward", || {
        // SAFETY: gelu_backward writes every element of its chunk.
        unsafe {
            kernels::par_filled(xs.len(), ELEMS, |i, dxs| {
                let at = i * ELEMS;
                vecmath::gelu_backward(&xs[at..][..dxs.len()], &dys[at..][..dxs.len()], dxs)
            })
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention

/// Causal multi-head self-attention of packed projections qkv (B, T, 3C) — q, k and v side by
/// side, each C = heads · d wide with head h at columns h·d.. — as
/// softmax(q kᵀ/√d + causal mask) ⊙ `dropout` · v, heads concatenated: (B, T, C). `dropout`
/// (B, heads, T, T) holds 0 or 1/(1 − p) per attention weight (None: no dropout).
pub fn causal_attention(qkv: &Tensor, heads: usize, dropout: Option<&Tensor>) -> Result<Tensor> {
    if !fast(&[qkv]) || dropout.is_some_and(|m| !fast(&[m])) {
        return causal_attention_reference(qkv, heads, dropout);
    }
    let mask = match dropout {
        Some(m) => m.contiguous()?,
        None => Tensor::zeros(0, DType::F32, qkv.device())?,
    };
    qkv.contiguous()?.apply_op2(&mask, AttentionOp { heads })
}

/// The same with candle's ops.
pub fn causal_attention_reference(qkv: &Tensor, heads: usize, dropout: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let hd = c / heads;
    let qkv = qkv.reshape((b, t, 3, heads, hd))?;
    let head = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (head(0)?, head(1)?, head(2)?);
    let causal: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let causal = Tensor::from_vec(causal, (t, t), qkv.device())?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?.broadcast_add(&causal)?;
    let mut weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
    if let Some(m) = dropout {
        weights = (weights * m)?;
    }
    weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, t, c))
}

struct AttentionOp {
    heads: usize,
}

/// (B, T, C, d) of qkv dims, checking the mask's.
fn attention_geometry(qkv: &[usize], mask: usize, heads: usize) -> Result<(usize, usize, usize, usize)> {
    let [b, t, c3] = qkv else { bail!("vqlab-attention: expected qkv (B, T, 3C), got {qkv:?}") };
    let (b, t, c3) = (*b, *t, *c3);
    if heads == 0 || c3 % (3 * heads) != 0 {
        bail!("vqlab-attention: {c3} qkv columns do not split into q, k, v of {heads} heads")
    }
    if mask != 0 && mask != b * heads * t * t {
        bail!("vqlab-attention: a dropout mask of {mask} elements for ({b}, {heads}, {t}, {t})")
    }
    Ok((b, t, c3 / 3, c3 / 3 / heads))
}

/// The attention weights P (T × T, zero above the diagonal) of one head of one image:
/// softmax over j ≤ i of (q_i · k_j) · scale.
fn attention_weights(qkv: &[f32], t: usize, c: usize, hd: usize, h: usize, p: &mut [f32]) {
    let q = MatRef { data: &qkv[h * hd..], rs: 3 * c, cs: 1 };
    let k = MatRef { data: &qkv[c + h * hd..], rs: 3 * c, cs: 1 };
    kernels::gemm(t, t, hd, q, k.t(), p, false);
    vecmath::causal_softmax(p, t, 1.0 / (hd as f32).sqrt());
}

/// Columns `col..col + d` of each of `t` rows of `dst` (row stride `stride`) = `src` (t × d).
fn scatter_cols(src: &[f32], d: usize, dst: &mut [f32], stride: usize, col: usize) {
    for (r, s) in src.chunks_exact(d).enumerate() {
        dst[r * stride + col..][..d].copy_from_slice(s);
    }
}

impl CustomOp2 for AttentionOp {
    fn name(&self) -> &'static str {
        "vqlab-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (qkv, mask) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let geo = attention_geometry(l1.dims(), mask.len(), self.heads)?;
        let (y, _) = attention_forward(qkv, mask, geo, self.heads, false);
        Ok((CpuStorage::F32(y), Shape::from((geo.0, geo.1, geo.2))))
    }

    fn bwd(&self, qkv: &Tensor, mask: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geo = attention_geometry(qkv.dims(), mask.elem_count(), self.heads)?;
        let dqkv = with_slices([qkv, mask, dy], |[qkv, mask, dy]| {
            Ok(attention_backward(qkv, mask, dy, None, geo, self.heads))
        })?;
        Ok((Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?), None))
    }
}

/// Attention's forward pass over qkv (B, T, 3C) of geometry (B, T, C, d): the output (B, T, C)
/// and, when `keep`, every head's attention weights P (B, heads, T, T; before dropout), which
/// spare the backward pass their recomputation (empty otherwise).
fn attention_forward(
    qkv: &[f32],
    mask: &[f32],
    (b, t, c, hd): (usize, usize, usize, usize),
    heads: usize,
    keep: bool,
) -> (Vec<f32>, Vec<f32>) {
    crate::util::profile::time("attention forward", || {
        let mut y = vec![0.0f32; b * t * c];
        let mut kept = vec![0.0f32; if keep { b * heads * t * t } else { 0 }];
        if t == 0 || c == 0 {
            return (y, kept);
        }
        let mut kept_parts: Vec<&mut [f32]> =
            if keep { kept.chunks_mut(heads * t * t).collect() } else { (0..b).map(|_| &mut [][..]).collect() };
        y.par_chunks_mut(t * c).zip(qkv.par_chunks(3 * t * c)).zip(kept_parts.par_iter_mut()).enumerate().for_each(
            |(bi, ((y, qkv), kept))| {
                let (mut scratch, mut pm, mut yh) = (vec![0.0f32; t * t], vec![0.0f32; t * t], vec![0.0f32; t * hd]);
                for h in 0..heads {
                    let p = if keep { &mut kept[h * t * t..][..t * t] } else { &mut scratch[..] };
                    attention_weights(qkv, t, c, hd, h, p);
                    let weights = if mask.is_empty() {
                        &*p
                    } else {
                        let m = &mask[(bi * heads + h) * t * t..][..t * t];
                        pm.iter_mut().zip(p.iter()).zip(m).for_each(|((o, p), m)| *o = p * m);
                        &pm[..]
                    };
                    let v = MatRef { data: &qkv[2 * c + h * hd..], rs: 3 * c, cs: 1 };
                    kernels::gemm(t, hd, t, MatRef::rows(weights, t), v, &mut yh, false);
                    scatter_cols(&yh, hd, y, c, h * hd);
                }
            },
        );
        (y, kept)
    })
}

/// Attention's backward pass: dqkv (B, T, 3C) from dy (B, T, C), with the forward pass's
/// attention weights when it kept them (None: recomputed per head).
fn attention_backward(
    qkv: &[f32],
    mask: &[f32],
    dy: &[f32],
    kept: Option<&[f32]>,
    (b, t, c, hd): (usize, usize, usize, usize),
    heads: usize,
) -> Vec<f32> {
    crate::util::profile::time("attention backward", || {
        let scale = 1.0 / (hd as f32).sqrt();
        let mut dqkv = vec![0.0f32; b * t * 3 * c];
        if t == 0 || c == 0 {
            return dqkv;
        }
        dqkv.par_chunks_mut(3 * t * c).zip(qkv.par_chunks(3 * t * c).zip(dy.par_chunks(t * c))).enumerate().for_each(
            |(bi, (dqkv, (qkv, dy)))| {
                let mut scratch = vec![0.0f32; t * t];
                let mut pm = vec![0.0f32; t * t];
                let mut dp = vec![0.0f32; t * t];
                let mut tmp = vec![0.0f32; t * hd];
                for h in 0..heads {
                    let p = match kept {
                        Some(kept) => &kept[(bi * heads + h) * t * t..][..t * t],
                        None => {
                            attention_weights(qkv, t, c, hd, h, &mut scratch);
                            &scratch[..]
                        }
                    };
                    let m = if mask.is_empty() { None } else { Some(&mask[(bi * heads + h) * t * t..][..t * t]) };
                    match m {
                        Some(m) => pm.iter_mut().zip(p).zip(m).for_each(|((o, p), m)| *o = p * m),
                        None => pm.copy_from_slice(p),
                    }
                    let q = MatRef { data: &qkv[h * hd..], rs: 3 * c, cs: 1 };
                    let k = MatRef { data: &qkv[c + h * hd..], rs: 3 * c, cs: 1 };
                    let v = MatRef { data: &qkv[2 * c + h * hd..], rs: 3 * c, cs: 1 };
                    let dyh = MatRef { data: &dy[h * hd..], rs: c, cs: 1 };
                    // dV = P̃ᵀ dY, dP̃ = dY Vᵀ, dP = dP̃ ⊙ mask.
                    kernels::gemm(t, hd, t, MatRef::rows(&pm, t).t(), dyh, &mut tmp, false);
                    scatter_cols(&tmp, hd, dqkv, 3 * c, 2 * c + h * hd);
                    kernels::gemm(t, t, hd, dyh, v.t(), &mut dp, false);
                    if let Some(m) = m {
                        dp.iter_mut().zip(m).for_each(|(d, m)| *d *= m);
                    }
                    // dS = P ⊙ (dP − Σ_j P dP) · scale, zero above the diagonal (P is).
                    vecmath::softmax_backward(p, &mut dp, t, scale);
                    // dQ = dS K, dK = dSᵀ Q.
                    kernels::gemm(t, hd, t, MatRef::rows(&dp, t), k, &mut tmp, false);
                    scatter_cols(&tmp, hd, dqkv, 3 * c, h * hd);
                    kernels::gemm(t, hd, t, MatRef::rows(&dp, t).t(), q, &mut tmp, false);
                    scatter_cols(&tmp, hd, dqkv, 3 * c, c + h * hd);
                }
            },
        );
        dqkv
    })
}

// ---------------------------------------------------------------------------------------------
// Residual add with dropout

/// x + y ⊙ `dropout` (x + y without it): a residual branch y added to the stream x through
/// its dropout mask (0 or 1/(1 − p) per element), in one pass and one tensor of the graph.
pub fn add_dropout(x: &Tensor, y: &Tensor, dropout: Option<&Tensor>) -> Result<Tensor> {
    if !fast(&[x, y]) || dropout.is_some_and(|m| !fast(&[m])) || x.shape() != y.shape() {
        return add_dropout_reference(x, y, dropout);
    }
    let mask = match dropout {
        Some(m) => m.contiguous()?,
        None => Tensor::zeros(0, DType::F32, x.device())?,
    };
    x.contiguous()?.apply_op3(&y.contiguous()?, &mask, AddDropoutOp)
}

/// The same with candle's ops.
pub fn add_dropout_reference(x: &Tensor, y: &Tensor, dropout: Option<&Tensor>) -> Result<Tensor> {
    match dropout {
        Some(m) => x + (y * m)?,
        None => x + y,
    }
}

struct AddDropoutOp;

impl CustomOp3 for AddDropoutOp {
    fn name(&self) -> &'static str {
        "vqlab-add-dropout"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, m) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        Ok((CpuStorage::F32(add_dropout_forward(x, y, m)?), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        mask: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = if mask.elem_count() == 0 {
            g.clone()
        } else {
            let dy = with_slices([g, mask], |[g, m]| dropout_backward(g, m))?;
            Tensor::from_vec(dy, g.shape(), g.device())?
        };
        Ok((Some(g.clone()), Some(dy), None))
    }
}

/// x + y ⊙ m (x + y for an empty m), elementwise.
fn add_dropout_forward(x: &[f32], y: &[f32], m: &[f32]) -> Result<Vec<f32>> {
    if y.len() != x.len() || (!m.is_empty() && m.len() != x.len()) {
        bail!("vqlab-add-dropout: {} + {} ⊙ a mask of {} elements", x.len(), y.len(), m.len())
    }
    Ok(crate::util::profile::time("residual add + dropout forward", || {
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(ELEMS).enumerate().for_each(|(ci, o)| {
            let at = ci * ELEMS;
            let (x, y) = (&x[at..at + o.len()], &y[at..at + o.len()]);
            if m.is_empty() {
                o.iter_mut().zip(x).zip(y).for_each(|((o, x), y)| *o = x + y);
            } else {
                let m = &m[at..at + o.len()];
                o.iter_mut().zip(x).zip(y).zip(m).for_each(|(((o, x), y), m)| *o = x + y * m);
            }
        });
        out
    }))
}

/// The dropped branch's gradient g ⊙ m.
fn dropout_backward(g: &[f32], m: &[f32]) -> Result<Vec<f32>> {
    if m.len() != g.len() {
        bail!("vqlab-add-dropout: a gradient of {} elements for a mask of {}", g.len(), m.len())
    }
    Ok(crate::util::profile::time("residual add + dropout backward", || {
        let mut dy = vec![0.0f32; g.len()];
        dy.par_chunks_mut(ELEMS)
            .zip(g.par_chunks(ELEMS).zip(m.par_chunks(ELEMS)))
            .for_each(|(d, (g, m))| d.iter_mut().zip(g).zip(m).for_each(|((d, g), m)| *d = g * m));
        dy
    }))
}

// ---------------------------------------------------------------------------------------------
// Transformer block

/// One pre-LayerNorm transformer block's parameters (minGPT's `Block`): each LayerNorm's gain
/// and bias, each linear layer's weight (out, in) and bias.
pub struct BlockParams<'a> {
    pub ln1: [&'a Tensor; 2],
    pub qkv: [&'a Tensor; 2],
    pub proj: [&'a Tensor; 2],
    pub ln2: [&'a Tensor; 2],
    pub fc: [&'a Tensor; 2],
    pub out: [&'a Tensor; 2],
}

impl BlockParams<'_> {
    /// All twelve, in the order the fused op packs them.
    fn all(&self) -> [&Tensor; 12] {
        let [a, b, c, d, e, f] = [self.ln1, self.qkv, self.proj, self.ln2, self.fc, self.out];
        [a[0], a[1], b[0], b[1], c[0], c[1], d[0], d[1], e[0], e[1], f[0], f[1]]
    }
}

/// One block's dropout masks, each 0 or 1/(1 − p) per element: the attention weights'
/// (B, heads, T, T) and the two residual branches' (B, T, C).
pub struct BlockMasks {
    pub attn: Vec<f32>,
    pub resid1: Vec<f32>,
    pub resid2: Vec<f32>,
}

/// x (B, T, C) through one pre-LayerNorm block: x₁ = x + proj(attention(qkv(LN₁(x)))) ⊙ m₁,
/// then x₁ + out(GELU(fc(LN₂(x₁)))) ⊙ m₂ (LayerNorm's ε = `eps`, the attention's weights
/// dropped by `masks.attn`) — [`transformer_block_composed`] as one op of the graph. Its
/// backward pass runs the same kernels in the same order, so the two give the same numbers,
/// bit for bit; but candle zero-fills and adds the gradient of every tensor in the graph (15
/// of them, 14·C per row, in a block built from the ops above), where here only x's and the
/// packed parameters' remain. The op keeps what its backward pass needs, the attention weights
/// included (the composed attention recomputes them).
pub fn transformer_block(
    x: &Tensor,
    p: &BlockParams<'_>,
    heads: usize,
    eps: f64,
    masks: Option<BlockMasks>,
) -> Result<Tensor> {
    let params = p.all();
    if !fast(&[x]) || !fast(&params) {
        return transformer_block_composed(x, p, heads, eps, masks.as_ref());
    }
    let (b, t, c) = x.dims3()?;
    let hidden = p.fc[0].dim(0)?;
    let want: [&[usize]; 12] =
        [&[c], &[c], &[3 * c, c], &[3 * c], &[c, c], &[c], &[c], &[c], &[hidden, c], &[hidden], &[c, hidden], &[c]];
    for (i, (t, w)) in params.iter().zip(want).enumerate() {
        if t.dims() != w {
            bail!("vqlab-block: parameter {i} of a block of width {c} has shape {:?}, expected {w:?}", t.dims())
        }
    }
    if heads == 0 || c % heads != 0 {
        bail!("vqlab-block: width {c} does not split into {heads} heads")
    }
    if let Some(m) = &masks {
        if m.attn.len() != b * heads * t * t || m.resid1.len() != b * t * c || m.resid2.len() != b * t * c {
            bail!(
                "vqlab-block: dropout masks of {}, {} and {} elements for ({b}, {heads}, {t}, {t}) and ({b}, {t}, {c})",
                m.attn.len(),
                m.resid1.len(),
                m.resid2.len()
            )
        }
    }
    let packed = Tensor::cat(&params.iter().map(|t| t.flatten_all()).collect::<Result<Vec<_>>>()?, 0)?;
    x.contiguous()?.apply_op2(&packed, BlockOp { heads, hidden, eps: eps as f32, masks, kept: Kept::new() })
}

/// The same block as a chain of the ops above (other devices take their candle references).
pub fn transformer_block_composed(
    x: &Tensor,
    p: &BlockParams<'_>,
    heads: usize,
    eps: f64,
    masks: Option<&BlockMasks>,
) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    let tensor = |v: &[f32], dims: &[usize]| Tensor::from_vec(v.to_vec(), dims, x.device());
    let (attn, m1, m2) = match masks {
        Some(m) => (
            Some(tensor(&m.attn, &[b, heads, t, t])?),
            Some(tensor(&m.resid1, &[b, t, c])?),
            Some(tensor(&m.resid2, &[b, t, c])?),
        ),
        None => (None, None, None),
    };
    let qkv = linear(&layer_norm(x, p.ln1[0], p.ln1[1], eps)?, p.qkv[0], Some(p.qkv[1]))?;
    let y = linear(&causal_attention(&qkv, heads, attn.as_ref())?, p.proj[0], Some(p.proj[1]))?;
    let x1 = add_dropout(x, &y, m1.as_ref())?;
    let h = linear_gelu(&layer_norm(&x1, p.ln2[0], p.ln2[1], eps)?, p.fc[0], Some(p.fc[1]))?;
    add_dropout(&x1, &linear(&h, p.out[0], Some(p.out[1]))?, m2.as_ref())
}

struct BlockOp {
    heads: usize,
    hidden: usize,
    eps: f32,
    masks: Option<BlockMasks>,
    kept: Kept<BlockKept>,
}

/// What the forward pass keeps for the backward pass: LN₁(x), qkv, the attention weights and
/// output, x₁, LN₂(x₁), the GELU's output and its derivative at fc's output.
struct BlockKept {
    a1: Vec<f32>,
    qkv: Vec<f32>,
    weights: Vec<f32>,
    att: Vec<f32>,
    x1: Vec<f32>,
    a2: Vec<f32>,
    dgelu: Vec<f32>,
    act: Vec<f32>,
}

/// Where each of the twelve parameters lies in the packed vector of a block of width c.
fn block_ranges(c: usize, hidden: usize) -> [std::ops::Range<usize>; 12] {
    let sizes = [c, c, 3 * c * c, 3 * c, c * c, c, c, c, hidden * c, hidden, c * hidden, c];
    let mut at = 0;
    sizes.map(|n| {
        at += n;
        at - n..at
    })
}

/// A linear layer's forward pass, timed as the op's.
fn linear_timed(x: &[f32], w: &[f32], b: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
    let layer = || format!("{inp} → {out}, {n} rows");
    crate::util::profile::time_detailed("linear forward", layer, || linear_rows(x, w, b, n, inp, out))
}

/// A linear layer's backward pass (dx, dw, db), timed as the op's.
#[allow(clippy::too_many_arguments)]
fn linear_backward_timed(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    has_bias: bool,
    need_x: bool,
) -> [Vec<f32>; 3] {
    let layer = || format!("{inp} → {out}, {n} rows");
    let (dx, dw, db) = crate::util::profile::time_detailed("linear backward", layer, || {
        linear_rows_backward(x, w, dy, n, inp, out, has_bias, need_x)
    });
    [dx, dw, db]
}

/// A dropped branch's gradient: g ⊙ m, or g itself without a mask.
fn masked<'a>(g: &'a [f32], m: &[f32]) -> Result<std::borrow::Cow<'a, [f32]>> {
    Ok(if m.is_empty() { g.into() } else { dropout_backward(g, m)?.into() })
}

/// a + b elementwise: a tensor's gradient from its two consumers (candle's zeroed gradient
/// plus each, which rounds the same: 0 + a = a, and a + b = b + a).
fn add_gradients(a: &[f32], b: &[f32]) -> Vec<f32> {
    crate::util::profile::time("residual gradient add", || {
        // SAFETY: every element of every chunk is written.
        unsafe {
            kernels::par_filled(a.len(), ELEMS, |i, o| {
                let at = i * ELEMS;
                o.iter_mut().zip(&a[at..]).zip(&b[at..]).for_each(|((o, a), b)| {
                    o.write(a + b);
                });
            })
        }
    })
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "vqlab-block"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let [b, t, c] = *l1.dims() else { bail!("{}: expected x (B, T, C), got {:?}", self.name(), l1.dims()) };
        let (n, hidden) = (b * t, self.hidden);
        let r = block_ranges(c, hidden);
        if w.len() != r[11].end {
            bail!("{}: {} packed parameters for width {c} and hidden width {hidden}", self.name(), w.len())
        }
        let (ma, m1, m2) = match &self.masks {
            Some(m) => (&m.attn[..], &m.resid1[..], &m.resid2[..]),
            None => (&[][..], &[][..], &[][..]),
        };
        let a1 = layer_norm_forward(x, &w[r[0].clone()], &w[r[1].clone()], self.eps)?;
        let qkv = linear_timed(&a1, &w[r[2].clone()], &w[r[3].clone()], n, c, 3 * c);
        let (att, weights) = attention_forward(&qkv, ma, (b, t, c, c / self.heads), self.heads, true);
        let y = linear_timed(&att, &w[r[4].clone()], &w[r[5].clone()], n, c, c);
        let x1 = add_dropout_forward(x, &y, m1)?;
        let a2 = layer_norm_forward(&x1, &w[r[6].clone()], &w[r[7].clone()], self.eps)?;
        let (act, dgelu) =
            gelu_forward_keeping_derivative(&linear_timed(&a2, &w[r[8].clone()], &w[r[9].clone()], n, c, hidden));
        let m = linear_timed(&act, &w[r[10].clone()], &w[r[11].clone()], n, hidden, c);
        let x2 = add_dropout_forward(&x1, &m, m2)?;
        self.kept.keep(BlockKept { a1, qkv, weights, att, x1, a2, dgelu, act }, self.name())?;
        Ok((CpuStorage::F32(x2), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, packed: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let k = self.kept.get(self.name())?;
        let (b, t, c) = x.dims3()?;
        let (n, hidden, heads) = (b * t, self.hidden, self.heads);
        let r = block_ranges(c, hidden);
        if dy.dims() != x.dims() || packed.elem_count() != r[11].end {
            bail!("{}: a gradient of {:?} for x {:?}", self.name(), dy.dims(), x.dims())
        }
        let (ma, m1, m2) = match &self.masks {
            Some(m) => (&m.attn[..], &m.resid1[..], &m.resid2[..]),
            None => (&[][..], &[][..], &[][..]),
        };
        let (dx, dw) = with_slices([x, packed, dy], |[x, w, dx2]| {
            // The MLP branch: x₂ = x₁ + out(GELU(fc(LN₂(x₁)))) ⊙ m₂.
            let dm = masked(dx2, m2)?;
            let [dact, dw_out, db_out] =
                linear_backward_timed(&k.act, &w[r[10].clone()], &dm, n, hidden, c, true, true);
            let dpre = gelu_backward_by(&k.dgelu, &dact)?;
            let [da2, dw_fc, db_fc] = linear_backward_timed(&k.a2, &w[r[8].clone()], &dpre, n, c, hidden, true, true);
            let (dx1_ln, dg2, db2) = layer_norm_backward(&k.x1, &w[r[6].clone()], &da2, self.eps)?;
            let dx1 = add_gradients(dx2, &dx1_ln);
            // The attention branch: x₁ = x + proj(attention(qkv(LN₁(x)))) ⊙ m₁.
            let dyp = masked(&dx1, m1)?;
            let [datt, dw_proj, db_proj] = linear_backward_timed(&k.att, &w[r[4].clone()], &dyp, n, c, c, true, true);
            let dqkv = attention_backward(&k.qkv, ma, &datt, Some(&k.weights), (b, t, c, c / heads), heads);
            let [da1, dw_qkv, db_qkv] = linear_backward_timed(&k.a1, &w[r[2].clone()], &dqkv, n, c, 3 * c, true, true);
            let (dx_ln, dg1, db1) = layer_norm_backward(x, &w[r[0].clone()], &da1, self.eps)?;
            let dx = add_gradients(&dx1, &dx_ln);
            let parts = [dg1, db1, dw_qkv, db_qkv, dw_proj, db_proj, dg2, db2, dw_fc, db_fc, dw_out, db_out];
            Ok((dx, parts.concat()))
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, packed.shape(), x.device())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Mean cross-entropy (nats) of logits (…, K) against targets (N,) u32, N the rows of the
/// logits: log-sum-exp minus the target's logit, averaged over rows.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !fast(&[logits]) || !targets.device().is_cpu() {
        return cross_entropy_reference(logits, targets);
    }
    logits.contiguous()?.apply_op2(&targets.to_dtype(DType::U32)?.contiguous()?, CrossEntropyOp { lse: Kept::new() })
}

/// The same with candle's ops.
pub fn cross_entropy_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.flatten_to(D::Minus2)?;
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_p.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// The op keeps each row's log-sum-exp.
struct CrossEntropyOp {
    lse: Kept<Vec<f32>>,
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else { bail!("vqlab-cross-entropy: u32 targets only") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("vqlab-cross-entropy: contiguous targets only") };
    Ok(&v[a..b])
}

fn check_targets(n: usize, k: usize, targets: &[u32]) -> Result<()> {
    if targets.len() != n {
        bail!("vqlab-cross-entropy: {} targets for {n} rows", targets.len())
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= k) {
        bail!("vqlab-cross-entropy: target {t} out of range for {k} classes")
    }
    Ok(())
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "vqlab-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (logits, targets) = (cpu_f32(s1, l1, self.name())?, u32_slice(s2, l2)?);
        let (n, k) = rows_of(l1.dims(), self.name())?;
        let (loss, lse) = cross_entropy_forward(logits, targets, n, k)?;
        self.lse.keep(lse, self.name())?;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = rows_of(logits.dims(), self.name())?;
        let (g, targets) = (g.to_dtype(DType::F32)?.to_scalar::<f32>()?, targets.to_vec1::<u32>()?);
        let lse = self.lse.get(self.name())?;
        let dl = with_slices([logits], |[ls]| cross_entropy_backward(ls, lse, &targets, n, k, g))?;
        Ok((Some(Tensor::from_vec(dl, logits.shape(), logits.device())?), None))
    }
}

/// The mean cross-entropy of n rows of k logits against their targets, and each row's
/// log-sum-exp (which the backward pass reuses).
fn cross_entropy_forward(logits: &[f32], targets: &[u32], n: usize, k: usize) -> Result<(f32, Vec<f32>)> {
    crate::util::profile::time("cross-entropy forward", || {
        check_targets(n, k, targets)?;
        let mut lse = vec![0.0f32; if k == 0 { 0 } else { n }];
        // Per chunk of rows in f64, added up in chunk order.
        let partial: Vec<f64> = logits
            .par_chunks(ROWS * k.max(1))
            .zip(targets.par_chunks(ROWS))
            .zip(lse.par_chunks_mut(ROWS))
            .map(|((ls, ts), lse)| {
                vecmath::log_sum_exp(ls, k, lse);
                ls.chunks_exact(k).zip(ts).zip(lse.iter()).map(|((row, &t), l)| f64::from(l - row[t as usize])).sum()
            })
            .collect();
        Ok(((partial.iter().sum::<f64>() / n as f64) as f32, lse))
    })
}

/// The cross-entropy's gradient g/N · (softmax − onehot(target)) for the loss's gradient g,
/// from the rows' log-sum-exp.
fn cross_entropy_backward(
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    n: usize,
    k: usize,
    g: f32,
) -> Result<Vec<f32>> {
    crate::util::profile::time("cross-entropy backward", || {
        check_targets(n, k, targets)?;
        let scale = g / n as f32;
        let mut dl = vec![0.0f32; logits.len()];
        if k == 0 {
            return Ok(dl);
        }
        if lse.len() != n {
            bail!("vqlab-cross-entropy: {} log-sum-exps for {n} rows", lse.len())
        }
        dl.par_chunks_mut(ROWS * k)
            .zip(logits.par_chunks(ROWS * k))
            .zip(targets.par_chunks(ROWS).zip(lse.par_chunks(ROWS)))
            .for_each(|((ds, ls), (ts, lse))| {
                vecmath::softmax_scaled(ls, k, lse, scale, ds);
                for (d, &t) in ds.chunks_exact_mut(k).zip(ts) {
                    d[t as usize] -= scale;
                }
            });
        Ok(dl)
    })
}

/// The mean cross-entropy of the logits x · wᵀ (x (…, in), w (K, in), no bias) against
/// targets (N,) u32: [`linear`] and [`cross_entropy`] as one op, so that the graph holds no
/// logits tensor (K wide per row, the widest of the prior's step, which candle's backward pass
/// would zero-fill and add into). The same numbers, bit for bit, as the two ops.
pub fn linear_cross_entropy(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !fast(&[x, w]) || !targets.device().is_cpu() {
        return cross_entropy(&linear(x, w, None)?, targets);
    }
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    x.contiguous()?.apply_op3(&w.contiguous()?, &targets, LinearCrossEntropyOp { logits: Kept::new() })
}

/// The fused op keeps its logits and their rows' log-sum-exp.
struct LinearCrossEntropyOp {
    logits: Kept<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp3 for LinearCrossEntropyOp {
    fn name(&self) -> &'static str {
        "vqlab-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, targets) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, u32_slice(s3, l3)?);
        let (n, inp, k, _) = linear_dims(self.name(), l1.dims(), l2.dims(), 0)?;
        let logits = linear_timed(x, w, &[], n, inp, k);
        let (loss, lse) = cross_entropy_forward(&logits, targets, n, k)?;
        self.logits.keep((logits, lse), self.name())?;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (logits, lse) = self.logits.get(self.name())?;
        let (n, inp, k, _) = linear_dims(self.name(), x.dims(), w.dims(), 0)?;
        let (g, targets) = (g.to_dtype(DType::F32)?.to_scalar::<f32>()?, targets.to_vec1::<u32>()?);
        let dl = cross_entropy_backward(logits, lse, &targets, n, k, g)?;
        let need_x = x.track_op();
        let [dx, dw, _] =
            with_slices([x, w], |[xs, ws]| Ok(linear_backward_timed(xs, ws, &dl, n, inp, k, false, need_x)))?;
        let dx = if need_x { Some(Tensor::from_vec(dx, x.shape(), x.device())?) } else { None };
        Ok((dx, Some(Tensor::from_vec(dw, (k, inp), x.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{rand_tensor, rel_err};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// The output of `f` on `inputs` (as variables) and the gradients of Σ y ⊙ r for each input.
    fn value_and_grads(inputs: &[Tensor], r: &Tensor, f: impl Fn(&[Tensor]) -> Tensor) -> Vec<Tensor> {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y];
        out.extend(ts.iter().map(|t| grads.get(t).expect("every input has a gradient").clone()));
        out
    }

    fn assert_matches(fast: &[Tensor], reference: &[Tensor], what: &str) {
        for (i, (a, b)) in fast.iter().zip(reference).enumerate() {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "{what}: output {i} (0 = value, then input gradients) off by {e} relative");
        }
    }

    #[test]
    fn linear_matches_candle_with_and_without_bias() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // Row counts below, at and across the chunk size.
        for (n, inp, out) in [(1, 3, 2), (64, 16, 48), (150, 33, 7), (200, 128, 384)] {
            let x = rand_tensor(&mut rng, &[n, inp], -1.0, 1.0);
            let w = rand_tensor(&mut rng, &[out, inp], -0.5, 0.5);
            let b = rand_tensor(&mut rng, &[out], -0.5, 0.5);
            let r = rand_tensor(&mut rng, &[n, out], -1.0, 1.0);
            let f =
                value_and_grads(&[x.clone(), w.clone(), b.clone()], &r, |t| linear(&t[0], &t[1], Some(&t[2])).unwrap());
            let g = value_and_grads(&[x.clone(), w.clone(), b], &r, |t| {
                linear_reference(&t[0], &t[1], Some(&t[2])).unwrap()
            });
            assert_matches(&f, &g, &format!("linear {n}x{inp}->{out}"));
            let f = value_and_grads(&[x.clone(), w.clone()], &r, |t| linear(&t[0], &t[1], None).unwrap());
            let g = value_and_grads(&[x, w], &r, |t| linear_reference(&t[0], &t[1], None).unwrap());
            assert_matches(&f, &g, &format!("linear {n}x{inp}->{out} without bias"));
        }
    }

    #[test]
    fn linear_takes_rows_of_any_leading_shape() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let (b_, t, inp, out) = (3, 49, 40, 24);
        let x = rand_tensor(&mut rng, &[b_, t, inp], -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[out, inp], -0.5, 0.5);
        let b = rand_tensor(&mut rng, &[out], -0.5, 0.5);
        let r = rand_tensor(&mut rng, &[b_, t, out], -1.0, 1.0);
        let inputs = [x.clone(), w.clone(), b.clone()];
        let f = value_and_grads(&inputs, &r, |t| linear(&t[0], &t[1], Some(&t[2])).unwrap());
        assert_eq!(f[0].dims(), &[b_, t, out]);
        assert_eq!(f[1].dims(), &[b_, t, inp], "dx has x's shape");
        let g = value_and_grads(&inputs, &r, |t| linear_reference(&t[0], &t[1], Some(&t[2])).unwrap());
        assert_matches(&f, &g, "linear (3, 49, 40) -> 24");
        // The same numbers, bit for bit, as on the (B·T, in) rows.
        let r2 = r.reshape((b_ * t, out)).unwrap();
        let rows = value_and_grads(&[x.reshape((b_ * t, inp)).unwrap(), w, b], &r2, |t| {
            linear(&t[0], &t[1], Some(&t[2])).unwrap()
        });
        for (a, b) in f.iter().zip(&rows) {
            let bits = |t: &Tensor| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(bits(a), bits(b));
        }
        let err = linear(
            &Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap(),
            None,
        );
        assert!(err.is_err(), "a 1-D input is no rows");
    }

    #[test]
    fn linear_gelu_matches_candle_and_the_two_ops_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        for (lead, inp, out) in [(vec![1], 3, 2), (vec![2, 49], 32, 128), (vec![300], 17, 70_000 / 300)] {
            let mut xd = lead.clone();
            xd.push(inp);
            let mut yd = lead.clone();
            yd.push(out);
            let x = rand_tensor(&mut rng, &xd, -2.0, 2.0);
            let w = rand_tensor(&mut rng, &[out, inp], -0.5, 0.5);
            let b = rand_tensor(&mut rng, &[out], -0.5, 0.5);
            let r = rand_tensor(&mut rng, &yd, -1.0, 1.0);
            let inputs = [x, w, b];
            let f = value_and_grads(&inputs, &r, |t| linear_gelu(&t[0], &t[1], Some(&t[2])).unwrap());
            let g = value_and_grads(&inputs, &r, |t| {
                linear_reference(&t[0], &t[1], Some(&t[2])).unwrap().gelu_erf().unwrap()
            });
            assert_matches(&f, &g, &format!("linear + gelu {xd:?} -> {out}"));
            let two = value_and_grads(&inputs, &r, |t| gelu(&linear(&t[0], &t[1], Some(&t[2])).unwrap()).unwrap());
            for (i, (a, b)) in f.iter().zip(&two).enumerate() {
                assert_eq!(bits(a), bits(b), "output {i} of {xd:?} -> {out}");
            }
            let nb = value_and_grads(&inputs[..2], &r, |t| linear_gelu(&t[0], &t[1], None).unwrap());
            let nb_ref = value_and_grads(&inputs[..2], &r, |t| gelu(&linear(&t[0], &t[1], None).unwrap()).unwrap());
            for (a, b) in nb.iter().zip(&nb_ref) {
                assert_eq!(bits(a), bits(b), "without bias, {xd:?} -> {out}");
            }
        }
    }

    /// x and a block's twelve parameters (LayerNorm gains near 1), random, for width c.
    fn block_inputs(rng: &mut impl Rng, b: usize, t: usize, c: usize) -> Vec<Tensor> {
        let h = 4 * c;
        let mut v = vec![rand_tensor(rng, &[b, t, c], -1.5, 1.5)];
        for dims in [vec![c], vec![c], vec![3 * c, c], vec![3 * c], vec![c, c], vec![c]] {
            v.push(rand_tensor(rng, &dims, -0.3, 0.3));
        }
        for dims in [vec![c], vec![c], vec![h, c], vec![h], vec![c, h], vec![c]] {
            v.push(rand_tensor(rng, &dims, -0.3, 0.3));
        }
        for i in [1, 7] {
            v[i] = (&v[i] + 1.0).unwrap();
        }
        v
    }

    fn block_params(p: &[Tensor]) -> BlockParams<'_> {
        BlockParams {
            ln1: [&p[0], &p[1]],
            qkv: [&p[2], &p[3]],
            proj: [&p[4], &p[5]],
            ln2: [&p[6], &p[7]],
            fc: [&p[8], &p[9]],
            out: [&p[10], &p[11]],
        }
    }

    #[test]
    fn the_fused_block_is_the_composed_block_bit_for_bit_and_matches_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        // Rows and elements below and across the ops' chunk sizes.
        for (b, t, heads, c, dropout) in
            [(1, 1, 1, 4, false), (2, 5, 2, 8, true), (3, 49, 4, 32, true), (2, 49, 4, 32, false)]
        {
            let inputs = block_inputs(&mut rng, b, t, c);
            let r = rand_tensor(&mut rng, &[b, t, c], -1.0, 1.0);
            let mut mask =
                |n: usize| -> Vec<f32> { (0..n).map(|_| if rng.random::<f32>() < 0.8 { 1.25 } else { 0.0 }).collect() };
            let masks = dropout.then(|| BlockMasks {
                attn: mask(b * heads * t * t),
                resid1: mask(b * t * c),
                resid2: mask(b * t * c),
            });
            let copy = |m: &BlockMasks| BlockMasks {
                attn: m.attn.clone(),
                resid1: m.resid1.clone(),
                resid2: m.resid2.clone(),
            };
            let fused = value_and_grads(&inputs, &r, |p| {
                transformer_block(&p[0], &block_params(&p[1..]), heads, 1e-5, masks.as_ref().map(copy)).unwrap()
            });
            let composed = value_and_grads(&inputs, &r, |p| {
                transformer_block_composed(&p[0], &block_params(&p[1..]), heads, 1e-5, masks.as_ref()).unwrap()
            });
            let what = format!("block ({b}, {t}, {c}), {heads} heads, dropout {dropout}");
            for (i, (f, g)) in fused.iter().zip(&composed).enumerate() {
                assert_eq!(f.dims(), g.dims(), "{what}: output {i}");
                assert_eq!(bits(f), bits(g), "{what}: output {i} (0 = value, 1 = dx, then the parameters)");
            }
            // candle's own ops, composed by hand.
            let reference = value_and_grads(&inputs, &r, |p| {
                let tensor = |v: &[f32], dims: &[usize]| Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap();
                let (am, m1, m2) = match &masks {
                    Some(m) => (
                        Some(tensor(&m.attn, &[b, heads, t, t])),
                        Some(tensor(&m.resid1, &[b, t, c])),
                        Some(tensor(&m.resid2, &[b, t, c])),
                    ),
                    None => (None, None, None),
                };
                let a1 = layer_norm_reference(&p[0], &p[1], &p[2], 1e-5).unwrap();
                let qkv = linear_reference(&a1, &p[3], Some(&p[4])).unwrap();
                let att = causal_attention_reference(&qkv, heads, am.as_ref()).unwrap();
                let y = linear_reference(&att, &p[5], Some(&p[6])).unwrap();
                let x1 = add_dropout_reference(&p[0], &y, m1.as_ref()).unwrap();
                let a2 = layer_norm_reference(&x1, &p[7], &p[8], 1e-5).unwrap();
                let h = linear_reference(&a2, &p[9], Some(&p[10])).unwrap().gelu_erf().unwrap();
                let m = linear_reference(&h, &p[11], Some(&p[12])).unwrap();
                add_dropout_reference(&x1, &m, m2.as_ref()).unwrap()
            });
            assert_matches(&fused, &reference, &what);
        }
        // A parameter of the wrong shape is an error naming it, not a panic.
        let inputs = block_inputs(&mut rng, 1, 3, 8);
        let mut p = block_params(&inputs[1..]);
        p.proj = [&inputs[3], &inputs[6]];
        let err = transformer_block(&inputs[0], &p, 2, 1e-5, None).unwrap_err().to_string();
        assert!(err.contains("parameter 4") && err.contains("[24, 8]"), "{err}");
    }

    #[test]
    fn layer_norm_matches_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for dims in [vec![3, 5], vec![4, 70, 16], vec![2, 49, 128]] {
            let c = *dims.last().unwrap();
            // An offset and a spread per row, as activations have.
            let x = (rand_tensor(&mut rng, &dims, -2.0, 2.0) + 0.7).unwrap();
            let gain = (rand_tensor(&mut rng, &[c], -0.5, 0.5) + 1.0).unwrap();
            let bias = rand_tensor(&mut rng, &[c], -0.5, 0.5);
            let r = rand_tensor(&mut rng, &dims, -1.0, 1.0);
            let inputs = [x, gain, bias];
            let f = value_and_grads(&inputs, &r, |t| layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap());
            let g = value_and_grads(&inputs, &r, |t| layer_norm_reference(&t[0], &t[1], &t[2], 1e-5).unwrap());
            assert_matches(&f, &g, &format!("layer norm {dims:?}"));
        }
    }

    #[test]
    fn gelu_matches_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = rand_tensor(&mut rng, &[3, 20_000], -5.0, 5.0);
        let r = rand_tensor(&mut rng, &[3, 20_000], -1.0, 1.0);
        let f = value_and_grads(std::slice::from_ref(&x), &r, |t| gelu(&t[0]).unwrap());
        let g = value_and_grads(&[x], &r, |t| t[0].gelu_erf().unwrap());
        assert_matches(&f, &g, "gelu");
    }

    #[test]
    fn attention_matches_candle_with_and_without_dropout() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for (b, t, heads, hd) in [(1, 1, 1, 3), (2, 5, 2, 4), (3, 49, 4, 8)] {
            let c = heads * hd;
            let qkv = rand_tensor(&mut rng, &[b, t, 3 * c], -1.5, 1.5);
            let r = rand_tensor(&mut rng, &[b, t, c], -1.0, 1.0);
            let f = value_and_grads(std::slice::from_ref(&qkv), &r, |x| causal_attention(&x[0], heads, None).unwrap());
            let g = value_and_grads(std::slice::from_ref(&qkv), &r, |x| {
                causal_attention_reference(&x[0], heads, None).unwrap()
            });
            assert_matches(&f, &g, &format!("attention ({b}, {t}, {heads}×{hd})"));
            let keep: Vec<f32> =
                (0..b * heads * t * t).map(|_| if rng.random_bool(0.8) { 1.25 } else { 0.0 }).collect();
            let mask = Tensor::from_vec(keep, (b, heads, t, t), &Device::Cpu).unwrap();
            let f = value_and_grads(std::slice::from_ref(&qkv), &r, |x| {
                causal_attention(&x[0], heads, Some(&mask)).unwrap()
            });
            let g = value_and_grads(&[qkv], &r, |x| causal_attention_reference(&x[0], heads, Some(&mask)).unwrap());
            assert_matches(&f, &g, &format!("attention ({b}, {t}, {heads}×{hd}) with dropout"));
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // The prior's default shapes, large enough for the gemm to split its work.
        let (b_, t, c, heads) = (64, 49, 128, 4);
        let n = b_ * t;
        let x = rand_tensor(&mut rng, &[n, c], -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[3 * c, c], -0.3, 0.3);
        let b = rand_tensor(&mut rng, &[3 * c], -0.3, 0.3);
        let (gain, bias) = (rand_tensor(&mut rng, &[c], -1.0, 1.0), rand_tensor(&mut rng, &[c], -1.0, 1.0));
        let r = rand_tensor(&mut rng, &[n, c], -1.0, 1.0);
        let t_len = t;
        let bits = |threads: usize| -> Vec<Vec<u32>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let inputs = [x.clone(), w.clone(), b.clone(), gain.clone(), bias.clone()];
                value_and_grads(&inputs, &r, |t| {
                    let h = layer_norm(&t[0], &t[3], &t[4], 1e-5).unwrap();
                    let qkv = linear(&h, &t[1], Some(&t[2])).unwrap().reshape((b_, t_len, 3 * c)).unwrap();
                    let y = causal_attention(&qkv, heads, None).unwrap().reshape((n, c)).unwrap();
                    gelu(&add_dropout(&t[0], &y, None).unwrap()).unwrap()
                })
                .iter()
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect())
                .collect()
            })
        };
        let one = bits(1);
        assert_eq!(one, bits(2), "1 thread against 2");
        assert_eq!(one, bits(3), "1 thread against 3");
    }

    #[test]
    fn residual_add_with_dropout_matches_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let dims = [3, 7000];
        let (x, y, r) = (
            rand_tensor(&mut rng, &dims, -1.0, 1.0),
            rand_tensor(&mut rng, &dims, -1.0, 1.0),
            rand_tensor(&mut rng, &dims, -1.0, 1.0),
        );
        let keep: Vec<f32> = (0..21_000).map(|_| if rng.random_bool(0.9) { 1.0 / 0.9 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(keep, &dims, &Device::Cpu).unwrap();
        for m in [None, Some(&mask)] {
            let inputs = [x.clone(), y.clone()];
            let f = value_and_grads(&inputs, &r, |t| add_dropout(&t[0], &t[1], m).unwrap());
            let g = value_and_grads(&inputs, &r, |t| add_dropout_reference(&t[0], &t[1], m).unwrap());
            assert_matches(&f, &g, &format!("residual add, mask {}", m.is_some()));
        }
    }

    #[test]
    fn cross_entropy_matches_candle_and_rejects_bad_targets() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (n, k) in [(1, 2), (70, 9), (300, 512)] {
            let logits = rand_tensor(&mut rng, &[n, k], -6.0, 6.0);
            let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
            let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
            // A scalar loss: r scales the incoming gradient.
            let r = Tensor::new(1.7f32, &Device::Cpu).unwrap();
            let f = value_and_grads(std::slice::from_ref(&logits), &r, |t| cross_entropy(&t[0], &targets).unwrap());
            let g = value_and_grads(&[logits], &r, |t| cross_entropy_reference(&t[0], &targets).unwrap());
            assert_matches(&f, &g, &format!("cross-entropy {n}x{k}"));
        }
        // Logits (B, T, K) are B·T rows.
        let logits = rand_tensor(&mut rng, &[4, 7, 11], -6.0, 6.0);
        let targets: Vec<u32> = (0..28).map(|_| rng.random_range(0..11u32)).collect();
        let targets = Tensor::from_vec(targets, 28, &Device::Cpu).unwrap();
        let r = Tensor::new(0.6f32, &Device::Cpu).unwrap();
        let f = value_and_grads(std::slice::from_ref(&logits), &r, |t| cross_entropy(&t[0], &targets).unwrap());
        assert_eq!(f[1].dims(), &[4, 7, 11]);
        let g = value_and_grads(&[logits], &r, |t| cross_entropy_reference(&t[0], &targets).unwrap());
        assert_matches(&f, &g, "cross-entropy (4, 7, 11)");
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &bad).unwrap_err().to_string();
        assert!(err.contains("target 3 out of range for 3 classes"), "{err}");
    }

    #[test]
    fn linear_cross_entropy_is_the_two_ops_bit_for_bit_and_matches_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        for (lead, inp, k) in [(vec![1], 3, 2), (vec![3, 49], 32, 512), (vec![70], 16, 9)] {
            let n: usize = lead.iter().product();
            let mut xd = lead.clone();
            xd.push(inp);
            let x = rand_tensor(&mut rng, &xd, -2.0, 2.0);
            let w = rand_tensor(&mut rng, &[k, inp], -0.5, 0.5);
            let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
            let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
            let r = Tensor::new(1.3f32, &Device::Cpu).unwrap();
            let inputs = [x, w];
            let f = value_and_grads(&inputs, &r, |t| linear_cross_entropy(&t[0], &t[1], &targets).unwrap());
            let two = value_and_grads(&inputs, &r, |t| {
                cross_entropy(&linear(&t[0], &t[1], None).unwrap(), &targets).unwrap()
            });
            for (i, (a, b)) in f.iter().zip(&two).enumerate() {
                assert_eq!(bits(a), bits(b), "output {i} of {xd:?} -> {k}");
            }
            let g = value_and_grads(&inputs, &r, |t| {
                cross_entropy_reference(&linear_reference(&t[0], &t[1], None).unwrap(), &targets).unwrap()
            });
            assert_matches(&f, &g, &format!("linear + cross-entropy {xd:?} -> {k}"));
        }
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let err = linear_cross_entropy(&x, &w, &bad).unwrap_err().to_string();
        assert!(err.contains("target 3 out of range for 3 classes"), "{err}");
    }
}
