//! 2-D convolution and transposed convolution with fused bias and relus, as candle custom
//! ops with their own backward pass.
//!
//! On the CPU, candle 0.11 computes a conv_transpose2d (and with it every conv2d's input
//! gradient) with a direct loop, and a conv2d's weight gradient as a convolution whose kernel
//! is the whole output gradient. Here all three products of a convolution — output, input
//! gradient, weight gradient — are gemms over a row matrix R(x) per chunk of images: one row
//! per output pixel, holding the c·kh·kw input values under the kernel there, channels last,
//! so that it is built from contiguous runs (see `kernels::im2row`):
//!
//! - conv:      y = W · R(x)ᵀ              dW = dy · R(x)             dx = row2im(dyᵀ · W)
//! - transpose: y = row2im(xᵀ · W)         dW = x · R(dy)             dx = W · R(dy)ᵀ
//!
//! (with W as (o, kh·kw·c) and dy, x in channel-major form (c, imgs·h·w)). A chunk's row
//! matrix stays in cache; it is built again in the backward pass rather than kept. The bias
//! add and a relu on the input and/or the output are fused into the layout passes around the
//! gemm, so they cost no extra tensors in the graph.
//!
//! A 3×3 convolution with stride 1 and padding 1 runs as Winograd F(4×4, 3×3) or F(2×2, 3×3)
//! instead when asked (`train.conv_algorithm = "winograd4"`, a run's default, or `"winograd"`,
//! see [`super::winograd`]); under `"winograd4"` a 4×4 one with 8 or more outputs runs as
//! F(3×3, 4×4). The functions below without an algorithm argument use the row matrix.
//!
//! Other devices (CUDA) and `VQLAB_REFERENCE_OPS=1` take candle's own ops; the tests check
//! that both give the same values and gradients.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::kernels::{self, resized, zeroed, Geom, MatRef};
use super::winograd::{self, Tile};
use crate::config::ConvAlgorithm;
use crate::util::tensor::{cpu_f32, with_slices};

/// Relus fused into a convolution: on its input (as in a pre-activation residual block) and
/// on its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fuse {
    pub relu_input: bool,
    pub relu_output: bool,
}

impl Fuse {
    pub const NONE: Fuse = Fuse { relu_input: false, relu_output: false };
    pub const RELU_OUT: Fuse = Fuse { relu_input: false, relu_output: true };
    pub const RELU_IN: Fuse = Fuse { relu_input: true, relu_output: false };
    pub const RELU_BOTH: Fuse = Fuse { relu_input: true, relu_output: true };
}

/// Whether the fast CPU ops are off (`VQLAB_REFERENCE_OPS=1`: candle's own ops everywhere,
/// for comparison).
pub fn reference_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("VQLAB_REFERENCE_OPS").is_ok_and(|v| !v.is_empty() && v != "0"))
}

// Tests compare the 1×1 path with the general one bit for bit (the flag is read on the
// thread that applies the op).
#[cfg(test)]
thread_local! {
    static LEGACY_POINTWISE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn legacy_pointwise() -> bool {
    LEGACY_POINTWISE.with(|c| c.get())
}

#[cfg(not(test))]
fn legacy_pointwise() -> bool {
    false
}

fn fast(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && !reference_forced()
}

/// relu(conv2d(relu(x), w) + b) with the relus as `fuse` says; w is (out, in, kh, kw).
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize, fuse: Fuse) -> Result<Tensor> {
    conv2d_using(x, w, b, stride, pad, fuse, ConvAlgorithm::Im2row)
}

/// [`conv2d`] with a 3×3, stride-1, padding-1 convolution computed by `algorithm` on the CPU
/// (any other shape, and other devices, ignore it).
pub fn conv2d_using(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    fuse: Fuse,
    algorithm: ConvAlgorithm,
) -> Result<Tensor> {
    build(x, w, b, ConvOp::new(stride, pad, fuse, false, None, algorithm))
}

/// [`conv2d`] whose output `y` is already known: an earlier call computed it from the same
/// values of x, w and b (the discriminator's pass over fakes, once with its weights held
/// constant for the generator's loss and once trainable for its own). Only the graph node is
/// new: the forward pass copies `y` instead of convolving again, and the backward pass is
/// [`conv2d`]'s, over these arguments. Other devices recompute.
pub fn conv2d_known(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    y: &Tensor,
    algorithm: ConvAlgorithm,
) -> Result<Tensor> {
    let known = (y.device().is_cpu() && y.dtype() == DType::F32).then(|| y.detach());
    build(x, w, b, ConvOp::new(stride, pad, Fuse::NONE, false, known, algorithm))
}

/// relu(conv_transpose2d(relu(x), w) + b); w is (in, out, kh, kw), no output padding.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    fuse: Fuse,
) -> Result<Tensor> {
    build(x, w, b, ConvOp::new(stride, pad, fuse, true, None, ConvAlgorithm::Im2row))
}

/// The op on the CPU, candle's ops elsewhere.
fn build(x: &Tensor, w: &Tensor, b: Option<&Tensor>, op: ConvOp) -> Result<Tensor> {
    if !fast(x, w) {
        let reference = if op.transpose { conv_transpose2d_reference } else { conv2d_reference };
        return reference(x, w, b, op.stride, op.pad, op.fuse);
    }
    apply(x, w, b, op)
}

fn apply(x: &Tensor, w: &Tensor, b: Option<&Tensor>, op: ConvOp) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    // No bias: an empty tensor stands in (custom ops take a fixed number of arguments).
    let b = match b {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(0, DType::F32, &Device::Cpu)?,
    };
    x.apply_op3(&w, &b, op)
}

/// The same computation with candle's ops.
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    fuse: Fuse,
) -> Result<Tensor> {
    let x = if fuse.relu_input { x.relu()? } else { x.clone() };
    finish_reference(x.conv2d(w, pad, stride, 1, 1)?, b, fuse)
}

/// The same computation with candle's ops.
pub fn conv_transpose2d_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
    fuse: Fuse,
) -> Result<Tensor> {
    let x = if fuse.relu_input { x.relu()? } else { x.clone() };
    finish_reference(x.conv_transpose2d(w, pad, 0, stride, 1)?, b, fuse)
}

fn finish_reference(y: Tensor, b: Option<&Tensor>, fuse: Fuse) -> Result<Tensor> {
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
        None => y,
    };
    if fuse.relu_output {
        y.relu()
    } else {
        Ok(y)
    }
}

struct ConvOp {
    stride: usize,
    pad: usize,
    fuse: Fuse,
    transpose: bool,
    /// The kernel in the row matrix's column order, (o, kh·kw·c) and its transpose
    /// (kh·kw·c, o): made by the forward pass, used again by the backward one.
    weights: OnceLock<(Vec<f32>, Vec<f32>)>,
    /// The output, when an earlier call computed it ([`conv2d_known`]).
    known: Option<Tensor>,
    /// How a 3×3, stride-1, padding-1 convolution runs.
    algorithm: ConvAlgorithm,
    /// The fewest gemm rows a unit of the row-matrix path's work gets ([`chunks_per_unit`]):
    /// [`MIN_GEMM_ROWS`], or 0 (one chunk a unit) in the test that compares the two.
    unit_rows: usize,
    /// The kernel in the Winograd domain, `[ξ][o][c]` (see [`winograd`]).
    wino: OnceLock<Vec<f32>>,
}

/// Images per chunk: a chunk's row matrix stays around 512 KiB, so that it, the gemm's packed
/// panels and the other scratch fit a core's L2 cache together, and every thread gets at
/// least two chunks. (Side by side on a 1 MiB-L2 EPYC, 512 KiB ran the benchmark step 3–4%
/// faster than 1 MiB and 256 KiB.) Winograd's V and M planes get 1 MiB: its 16 gemms per
/// chunk are short in the tile count, and 1 MiB ran the benchmark's 3×3 layers 5–15% faster
/// than 512 KiB and far faster than 256 KiB. F(4×4)'s 36 planes get the same 1 MiB (7 images
/// of 128 + 128 channels at 7×7): 2 and 4 MiB ran the benchmark step no faster.
fn chunk_images(g: &Geom, wino: Option<Tile>) -> usize {
    let (floats_per_image, budget) = if let Some(tile) = wino {
        (winograd::floats_per_image(g.c, g.o, g.h, g.w, tile).max(1), 1usize << 18)
    } else {
        ((g.q() * g.p()).max(g.c * g.hw()).max(g.o * g.p()).max(1), 1usize << 17)
    };
    let by_cache = (budget / floats_per_image).max(1);
    by_cache.min(images_per_thread_share(g))
}

/// The most images a chunk may hold so that every thread gets at least two chunks.
fn images_per_thread_share(g: &Geom) -> usize {
    g.n.div_ceil(2 * rayon::current_num_threads()).max(1)
}

/// The fewest output pixels (gemm rows) the row-matrix path's forward and input-gradient gemms
/// get when a chunk of [`chunk_images`] images has fewer: the gemm crate's FMA kernel works on
/// 16 rows at a time, and a 1-image chunk of the discriminator's 4×4 128→256 layer on 7×7 (36
/// rows) left its last block a quarter full and paid the B panel's packing per 36 rows. (Side
/// by side on a 2-core EPYC, 128 rows took 31% less time than one image a gemm in that layer's
/// backward pass and 22% less in its forward; 64 rows saved less.)
const MIN_GEMM_ROWS: usize = 128;

/// Chunks of `chunk` images that one unit of the row-matrix path's work covers: enough for
/// `min_rows` gemm rows. A unit's forward and input-gradient gemms run over all its images at
/// once (the gemm crate blocks k by k, the cache and its kernel's width alone, so every element
/// of their output is the same sum over k whatever the row count), while the weight and bias
/// gradients are still summed one chunk at a time, in chunk order, so the result has the bits it
/// had with one chunk a unit. Narrow outputs (fewer than 16 channels, the discriminator's last
/// 256→1 layer) keep one chunk a unit: their gemms are matrix–vector products that gain nothing
/// from more rows, and ran slower with them.
fn chunks_per_unit(g: &Geom, chunk: usize, row_matrix: bool, min_rows: usize) -> usize {
    if row_matrix && g.o >= 16 {
        min_rows.div_ceil((chunk * g.p()).max(1)).max(1)
    } else {
        1
    }
}

/// The weight and bias gradient sums of one group of chunks.
struct Partial {
    /// At least the op's weight-gradient length; only that prefix is used. Taken from
    /// [`PARTIAL_SUMS`] (its contents are whatever an earlier call left there): the group's
    /// first weight-gradient gemm overwrites it instead of adding into it.
    dw: Vec<f32>,
    db: Vec<f32>,
    /// Whether a chunk of the group has run (a group can get none); until one has, its first
    /// weight-gradient gemm is still to come.
    ran: bool,
}

/// Weight-gradient sum buffers kept from call to call, so that a backward pass neither
/// allocates nor zero-fills them (the Winograd ones hold 36 · o · c floats a group: 2.4 MB for
/// a 128 → 128 layer, four groups on two threads). At most [`POOLED_SUMS`] are kept.
static PARTIAL_SUMS: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
const POOLED_SUMS: usize = 16;

impl Partial {
    /// A group's sums: a pooled weight-gradient buffer of at least `dw_len` floats (the longest
    /// in the pool; grown with zeros only where it is shorter) and zeroed bias sums.
    fn take(dw_len: usize, db_len: usize) -> Self {
        let pooled = (dw_len > 0).then(|| {
            let mut pool = PARTIAL_SUMS.lock().unwrap_or_else(|e| e.into_inner());
            let longest = (0..pool.len()).max_by_key(|&i| pool[i].len());
            longest.map(|i| pool.swap_remove(i))
        });
        let mut dw = pooled.flatten().unwrap_or_default();
        resized(&mut dw, dw_len);
        Partial { dw, db: vec![0.0; db_len], ran: false }
    }

    /// Hands the weight-gradient buffer back to the pool.
    fn give_back(self) {
        let mut pool = PARTIAL_SUMS.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_SUMS && !self.dw.is_empty() {
            pool.push(self.dw);
        }
    }
}

/// Σ_g parts[g][i] for i < len, added as `((0 + p₀) + p₁) + …` in group order, as a serial
/// loop over a zeroed vector adds them (so the bits do not depend on the split), in parallel
/// chunks and without a zero-fill first. Zeros for no parts.
fn sum_partials(parts: &[&[f32]], len: usize) -> Vec<f32> {
    let Some((first, rest)) = parts.split_first() else {
        return vec![0.0; len];
    };
    const CHUNK: usize = 1 << 14;
    // SAFETY: every element of each chunk is written by the first loop.
    unsafe {
        kernels::par_filled(len, CHUNK, |ci, out| {
            let at = ci * CHUNK;
            for (o, v) in out.iter_mut().zip(&first[at..]) {
                o.write(0.0 + v);
            }
            // SAFETY: the loop above initialised all of `out`.
            let out = &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]);
            for part in rest {
                out.iter_mut().zip(&part[at..]).for_each(|(o, v)| *o += v);
            }
        })
    }
}

/// A thread's buffers for the chunks it runs. They are kept from call to call, so that a
/// training step neither allocates nor zero-fills them again.
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    k: kernels::Scratch,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Runs `f` with this thread's buffers (with fresh ones if they are in use further up).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut Buffers::default()),
    })
}

/// In the unit tests, fills a chunk the 1×1 path writes without a zero-fill (an output or
/// input gradient) with NaN first, so that an element it leaves unwritten fails the
/// comparisons with candle's ops; nothing outside the tests.
#[inline(always)]
fn poison_in_tests(_chunk: &mut [MaybeUninit<f32>]) {
    #[cfg(test)]
    _chunk.iter_mut().for_each(|v| {
        v.write(f32::NAN);
    });
}

impl ConvOp {
    fn new(
        stride: usize,
        pad: usize,
        fuse: Fuse,
        transpose: bool,
        known: Option<Tensor>,
        algorithm: ConvAlgorithm,
    ) -> Self {
        ConvOp {
            stride,
            pad,
            fuse,
            transpose,
            weights: OnceLock::new(),
            known,
            algorithm,
            wino: OnceLock::new(),
            unit_rows: MIN_GEMM_ROWS,
        }
    }

    /// [`chunks_per_unit`] for this op: units of several chunks only on the row-matrix path
    /// (not Winograd, 1×1 or transposed convolutions).
    fn chunks_per_unit(&self, g: &Geom, chunk: usize, wino: Option<Tile>, pointwise: bool) -> usize {
        chunks_per_unit(g, chunk, wino.is_none() && !pointwise && !self.transpose, self.unit_rows)
    }

    /// The kernel (o, c, kh, kw) as (o, kh·kw·c) and as its transpose; computed once per op.
    fn row_weights(&self, w: &[f32], g: &Geom) -> &(Vec<f32>, Vec<f32>) {
        self.weights.get_or_init(|| {
            let wr = kernels::weight_to_rows(w, g);
            let wrt = kernels::transposed(&wr, g.o, g.q());
            (wr, wrt)
        })
    }

    /// The convolution geometry from the input and kernel shapes.
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Geom> {
        let name = self.name_();
        let [n, c, h, wd] = dims4(x, name)?;
        let [w0, w1, kh, kw] = dims4(w, name)?;
        let (s, p) = (self.stride, self.pad);
        if s == 0 {
            bail!("{name}: stride 0")
        }
        if !self.transpose {
            if w1 != c {
                bail!("{name}: input has {c} channels, kernel expects {w1}")
            }
            if h + 2 * p < kh || wd + 2 * p < kw {
                bail!("{name}: kernel {kh}×{kw} larger than the padded input {h}×{wd}")
            }
            Ok(Geom {
                n,
                c,
                h,
                w: wd,
                o: w0,
                kh,
                kw,
                stride: s,
                pad: p,
                ho: (h + 2 * p - kh) / s + 1,
                wo: (wd + 2 * p - kw) / s + 1,
            })
        } else {
            if w0 != c {
                bail!("{name}: input has {c} channels, kernel expects {w0}")
            }
            let (big_h, big_w) = ((h.max(1) - 1) * s + kh, (wd.max(1) - 1) * s + kw);
            if big_h < 2 * p || big_w < 2 * p || h == 0 || wd == 0 {
                bail!("{name}: padding {p} leaves no output for a {h}×{wd} input")
            }
            Ok(Geom { n, c: w1, h: big_h - 2 * p, w: big_w - 2 * p, o: c, kh, kw, stride: s, pad: p, ho: h, wo: wd })
        }
    }

    /// The Winograd tile of a convolution with stride 1 and padding 1 when the algorithm asks
    /// for one (None: im2row): 3×3 kernels under `winograd` and `winograd4`, 4×4 kernels with
    /// at least 8 outputs (the discriminator's inner ones) under `winograd4`. (Its last conv,
    /// 4×4 to one channel, ran 1.4× slower as F(3×3, 4×4): 36 gemms of one column each.)
    fn winograd(&self, g: &Geom) -> Option<Tile> {
        if self.transpose || (g.stride, g.pad) != (1, 1) || g.c == 0 || g.o == 0 || g.kh != g.kw {
            return None;
        }
        match (self.algorithm, g.kh) {
            (ConvAlgorithm::Winograd, 3) => Some(Tile::F2),
            (ConvAlgorithm::Winograd4, 3) => Some(Tile::F4),
            (ConvAlgorithm::Winograd4, 4) if g.o >= 8 => Some(Tile::F3K4),
            _ => None,
        }
    }

    /// The kernel in the forms the passes use, each computed once per op: (o, kh·kw·c) and
    /// its transpose for im2row, or the Winograd domain's `[ξ][o][c]` (the others empty).
    fn kernel_forms(&self, w: &[f32], g: &Geom, wino: Option<Tile>) -> (&[f32], &[f32], &[f32]) {
        if let Some(tile) = wino {
            (&[], &[], self.wino.get_or_init(|| winograd::weight_transform(w, g.o, g.c, tile)))
        } else {
            let (wr, wrt) = self.row_weights(w, g);
            (wr, wrt, &[])
        }
    }

    /// A 1×1 convolution with stride 1 and no padding, which runs without a row matrix.
    fn pointwise(&self, g: &Geom) -> bool {
        !self.transpose && g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0 && !legacy_pointwise()
    }

    /// What a pass ran on, for the profile's per-layer rows: kernel/stride, channels in → out
    /// (the layer's own, for a transposed convolution), the input map and the algorithm.
    fn label(&self, x: &[usize], w: &[usize]) -> String {
        let (Ok([n, c, h, wd]), Ok([w0, w1, kh, kw])) = (dims4(x, ""), dims4(w, "")) else {
            return format!("{x:?} {w:?}");
        };
        let (kind, out) = if self.transpose { ("T", w1) } else { ("", w0) };
        let how = match self.geom(x, w).ok().and_then(|g| self.winograd(&g)) {
            Some(Tile::F2) => ", Winograd F(2×2, 3×3)",
            Some(Tile::F4) => ", Winograd F(4×4, 3×3)",
            Some(Tile::F3K4) => ", Winograd F(3×3, 4×4)",
            None => "",
        };
        format!("{kind}{kh}×{kw}/{} {c}→{out} on {n}×{h}×{wd}{how}", self.stride)
    }

    fn name_(&self) -> &'static str {
        if self.transpose {
            "vqlab-conv-transpose2d"
        } else {
            "vqlab-conv2d"
        }
    }
}

fn dims4(d: &[usize], name: &str) -> Result<[usize; 4]> {
    match d {
        [a, b, c, e] => Ok([*a, *b, *c, *e]),
        _ => bail!("{name}: expected a 4-D tensor, got shape {d:?}"),
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        self.name_()
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
        let pass = match (self.transpose, self.known.is_some()) {
            (true, _) => "conv_transpose2d forward",
            (false, false) => "conv2d forward",
            (false, true) => "conv2d forward, output reused",
        };
        let layer = || self.label(l1.dims(), l2.dims());
        crate::util::profile::time_detailed(pass, layer, || {
            let g = self.geom(l1.dims(), l2.dims())?;
            let (x, w, b) =
                (cpu_f32(s1, l1, self.name_())?, cpu_f32(s2, l2, self.name_())?, cpu_f32(s3, l3, self.name_())?);
            let out_channels = if self.transpose { g.c } else { g.o };
            let bias = match b.len() {
                0 => None,
                n if n == out_channels => Some(b),
                n => bail!("{}: bias has {n} elements for {out_channels} output channels", self.name_()),
            };
            let (q, p, hw) = (g.q(), g.p(), g.hw());
            let (in_img, out_img) = if self.transpose { (g.o * p, g.c * hw) } else { (g.c * hw, g.o * p) };
            let shape =
                if self.transpose { Shape::from((g.n, g.c, g.h, g.w)) } else { Shape::from((g.n, g.o, g.ho, g.wo)) };
            let len = g.n * out_img;
            if let Some(known) = &self.known {
                if known.dims() != shape.dims() {
                    bail!("{}: known output {:?} for an output of shape {:?}", self.name_(), known.dims(), shape.dims())
                }
                let y = with_slices([known], |[y]| Ok(y.to_vec()))?;
                return Ok((CpuStorage::F32(y), shape));
            }
            // Filled chunk by chunk by the threads that compute it (no serial zero-fill first).
            let mut y: Vec<f32> = Vec::with_capacity(len);
            if len == 0 {
                return Ok((CpuStorage::F32(y), shape));
            }
            let wino = self.winograd(&g);
            let (fuse, pointwise) = (self.fuse, self.pointwise(&g));
            let chunk = chunk_images(&g, wino);
            // The sums of y do not depend on the chunking, so a unit is one chunk here; it stays
            // at least two per thread.
            let per_unit = self.chunks_per_unit(&g, chunk, wino, pointwise);
            let chunk = (chunk * per_unit).min(images_per_thread_share(&g).max(chunk));
            let (wr, wrt, u) = self.kernel_forms(w, &g, wino);
            y.spare_capacity_mut()[..len].par_chunks_mut(chunk * out_img).enumerate().for_each(|(ci, ys_uninit)| {
                with_buffers(|s| {
                    let imgs = ys_uninit.len() / out_img;
                    let np = imgs * p;
                    let xs = &x[ci * chunk * in_img..][..imgs * in_img];
                    if pointwise {
                        poison_in_tests(ys_uninit);
                        // A 1×1 convolution is a gemm per image on the channel-major data itself:
                        // y_img (o × p) = W (o × c) · x_img (c × p), the same sums as the row
                        // matrix's gemm (no layout passes; tested bit for bit), written straight
                        // into the output's uninitialised chunk.
                        for (xi, yi) in xs.chunks_exact(in_img).zip(ys_uninit.chunks_exact_mut(out_img)) {
                            let xi = if fuse.relu_input {
                                let r = resized(&mut s.a, in_img);
                                r.iter_mut().zip(xi).for_each(|(r, v)| *r = v.max(0.0));
                                &s.a[..in_img]
                            } else {
                                xi
                            };
                            let yi = kernels::gemm_uninit(g.o, p, g.c, MatRef::rows(wr, g.c), MatRef::rows(xi, p), yi);
                            for (ci, plane) in yi.chunks_exact_mut(p).enumerate() {
                                let b = bias.map_or(0.0, |b| b[ci]);
                                plane.iter_mut().for_each(|v| {
                                    let t = *v + b;
                                    *v = if fuse.relu_output { t.max(0.0) } else { t };
                                });
                            }
                        }
                        return;
                    }
                    let ys = zeroed(ys_uninit);
                    if let Some(tile) = wino {
                        let (th, tw) = winograd::tiles(g.ho, g.wo, tile);
                        let (t, c, o, pts) = (imgs * th * tw, g.c, g.o, tile.points());
                        let (sv, sm) = (winograd::plane_stride(c * t), winograd::plane_stride(o * t));
                        let v = resized(&mut s.a, pts * sv);
                        winograd::input_transform(tile, xs, imgs, c, g.h, g.w, fuse.relu_input, v, &mut s.d);
                        let m = resized(&mut s.b, pts * sm);
                        for (xi, mx) in m.chunks_exact_mut(sm).enumerate() {
                            let (ux, vx) = (&u[xi * o * c..][..o * c], &s.a[xi * sv..][..c * t]);
                            kernels::gemm(
                                t,
                                o,
                                c,
                                MatRef::rows(vx, c),
                                MatRef::rows(ux, c).t(),
                                &mut mx[..o * t],
                                false,
                            );
                        }
                        winograd::output_transform(
                            tile,
                            &s.b[..pts * sm],
                            imgs,
                            o,
                            g.ho,
                            g.wo,
                            bias,
                            fuse.relu_output,
                            ys,
                            &mut s.d,
                        );
                    } else if !self.transpose {
                        let rows = resized(&mut s.a, np * q);
                        kernels::im2row(xs, &g, imgs, fuse.relu_input, rows, &mut s.k);
                        // Pixel-major output (np × o) = R · Wᵀ: gemm packs both operands from
                        // contiguous runs this way round.
                        let yp = resized(&mut s.b, np * g.o);
                        kernels::gemm(np, g.o, q, MatRef::rows(&s.a[..np * q], q), MatRef::rows(wrt, g.o), yp, false);
                        kernels::from_pixel_major(&s.b[..np * g.o], imgs, g.o, p, bias, fuse.relu_output, None, ys);
                    } else {
                        let xt = resized(&mut s.a, g.o * np);
                        kernels::to_channel_major(xs, imgs, g.o, p, fuse.relu_input, None, xt, None, imgs);
                        let drows = resized(&mut s.b, np * q);
                        let xt = MatRef::rows(&s.a[..g.o * np], np).t();
                        kernels::gemm(np, q, g.o, xt, MatRef::rows(wr, q), drows, false);
                        kernels::row2im(&s.b[..np * q], &g, imgs, None, bias, ys, &mut s.k);
                        if fuse.relu_output {
                            ys.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                    }
                })
            });
            // SAFETY: every chunk of the first `len` elements was initialised above, by the 1×1
            // path's gemms or by `zeroed`.
            unsafe { y.set_len(len) };
            Ok((CpuStorage::F32(y), shape))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pass = if self.transpose { "conv_transpose2d backward" } else { "conv2d backward" };
        let layer = || self.label(x.dims(), w.dims());
        crate::util::profile::time_detailed(pass, layer, || {
            let g = self.geom(x.dims(), w.dims())?;
            let (q, p, hw) = (g.q(), g.p(), g.hw());
            let (need_x, need_w, need_b) = (x.track_op(), w.track_op(), b.elem_count() > 0 && b.track_op());
            let (in_img, out_img) = if self.transpose { (g.o * p, g.c * hw) } else { (g.c * hw, g.o * p) };
            let out_channels = if self.transpose { g.c } else { g.o };
            let (fuse, pointwise, wino) = (self.fuse, self.pointwise(&g), self.winograd(&g));
            let chunk = chunk_images(&g, wino);
            let per_unit = self.chunks_per_unit(&g, chunk, wino, pointwise);
            let dw_len = if let Some(tile) = wino { tile.points() * g.o * g.c } else { g.o * q };
            // The weight-gradient sums a group keeps: none when no weight gradient is wanted.
            let sums_len = if need_w { dw_len } else { 0 };
            // Like y in the forward pass: each unit is filled by the thread that computes it.
            let dx_len = if need_x { g.n * in_img } else { 0 };
            let mut dx: Vec<f32> = Vec::with_capacity(dx_len);
            let n_chunks = g.n.div_ceil(chunk);
            // Chunks go to a fixed number of groups of consecutive chunks, each summing its weight
            // and bias gradients in chunk order, and the groups' sums are added in group order:
            // the result does not depend on which thread ran what. A group runs its chunks
            // `per_unit` at a time (see [`chunks_per_unit`]); a unit never spans two groups.
            let groups = n_chunks.min(2 * rayon::current_num_threads()).max(1);
            let per_group = n_chunks.div_ceil(groups);
            type Unit<'a> = (usize, usize, Option<&'a mut [MaybeUninit<f32>]>);
            let mut grouped: Vec<Vec<Unit<'_>>> = (0..groups).map(|_| Vec::new()).collect();
            let mut dx_rest = (dx_len > 0).then(|| &mut dx.spare_capacity_mut()[..dx_len]);
            for (gi, units) in grouped.iter_mut().enumerate() {
                let (mut c0, end) = ((gi * per_group).min(n_chunks), ((gi + 1) * per_group).min(n_chunks));
                while c0 < end {
                    let chunks = per_unit.min(end - c0);
                    let imgs = (chunks * chunk).min(g.n - c0 * chunk);
                    let dxu = dx_rest.take().map(|rest| {
                        let (head, tail) = rest.split_at_mut(imgs * in_img);
                        dx_rest = Some(tail);
                        head
                    });
                    units.push((c0, chunks, dxu));
                    c0 += chunks;
                }
            }
            let total = with_slices([x, w, y, dy], |[xs, ws, ys, dys]| {
                let (wr, wrt, u) = self.kernel_forms(ws, &g, wino);
                let process = |part: &mut Partial,
                               s: &mut Buffers,
                               c0: usize,
                               chunks: usize,
                               dxc: Option<&mut [MaybeUninit<f32>]>| {
                    // The 1×1 path's gemms write every element of its input gradient: it gets the
                    // chunk uninitialised; the other paths get it zero-filled.
                    let (dxc, mut dx_pointwise) = if pointwise { (None, dxc) } else { (dxc.map(zeroed), None) };
                    if let Some(d) = dx_pointwise.as_deref_mut() {
                        poison_in_tests(d);
                    }
                    let i0 = c0 * chunk;
                    let imgs = (chunks * chunk).min(g.n - i0);
                    let np = imgs * p;
                    let xc = &xs[i0 * in_img..][..imgs * in_img];
                    let yc = &ys[i0 * out_img..][..imgs * out_img];
                    let dyc = &dys[i0 * out_img..][..imgs * out_img];
                    // The group's first weight-gradient gemm writes its sums, later ones add.
                    let first_dw = !std::mem::replace(&mut part.ran, true);
                    let part_dw = &mut part.dw[..sums_len];
                    if let Some(tile) = wino {
                        let (th, tw) = winograd::tiles(g.ho, g.wo, tile);
                        let (t, c, o, pts) = (imgs * th * tw, g.c, g.o, tile.points());
                        let (sv, sm) = (winograd::plane_stride(c * t), winograd::plane_stride(o * t));
                        let dm = resized(&mut s.b, pts * sm);
                        let mask = fuse.relu_output.then_some(yc);
                        winograd::grad_output_transform(
                            tile,
                            dyc,
                            mask,
                            imgs,
                            o,
                            g.ho,
                            g.wo,
                            dm,
                            &mut part.db,
                            &mut s.d,
                        );
                        let dm = &s.b[..pts * sm];
                        if need_w {
                            let v = resized(&mut s.a, pts * sv);
                            winograd::input_transform(tile, xc, imgs, c, g.h, g.w, fuse.relu_input, v, &mut s.d);
                            for (xi, dux) in part_dw.chunks_exact_mut(o * c).enumerate() {
                                let (dmx, vx) = (&dm[xi * sm..][..o * t], &s.a[xi * sv..][..c * t]);
                                let (dmt, v) = (MatRef::rows(dmx, o).t(), MatRef::rows(vx, c));
                                kernels::gemm(o, c, t, dmt, v, dux, !first_dw);
                            }
                        }
                        if let Some(dxc) = dxc {
                            let dv = resized(&mut s.c, pts * sv);
                            for (xi, dvx) in dv.chunks_exact_mut(sv).enumerate() {
                                let (ux, dmx) = (&u[xi * o * c..][..o * c], &dm[xi * sm..][..o * t]);
                                kernels::gemm(
                                    t,
                                    c,
                                    o,
                                    MatRef::rows(dmx, o),
                                    MatRef::rows(ux, c),
                                    &mut dvx[..c * t],
                                    false,
                                );
                            }
                            let mask = fuse.relu_input.then_some(xc);
                            winograd::grad_input_transform(
                                tile,
                                &s.c[..pts * sv],
                                imgs,
                                c,
                                g.h,
                                g.w,
                                mask,
                                dxc,
                                &mut s.d,
                            );
                        }
                    } else if !self.transpose {
                        // dyt = dy (through the output relu) in channel-major form; its row
                        // sums are the bias gradient.
                        let dyt = resized(&mut s.b, g.o * np);
                        let mask = fuse.relu_output.then_some(yc);
                        kernels::to_channel_major(dyc, imgs, g.o, p, false, mask, dyt, Some(&mut part.db), chunk);
                        let dyt = &s.b[..g.o * np];
                        if need_w {
                            let rows = resized(&mut s.a, np * q);
                            kernels::im2row(xc, &g, imgs, fuse.relu_input, rows, &mut s.k);
                            let rows = &s.a[..np * q];
                            // One accumulating gemm per chunk, in chunk order.
                            for i in (0..imgs).step_by(chunk) {
                                let ci = chunk.min(imgs - i) * p;
                                let dyi = MatRef { data: &dyt[i * p..], rs: np, cs: 1 };
                                let ri = MatRef::rows(&rows[i * p * q..][..ci * q], q);
                                kernels::gemm(g.o, q, ci, dyi, ri, part_dw, !(first_dw && i == 0));
                            }
                        }
                        if let Some(dxc) = dx_pointwise {
                            // 1×1: dx_img (c × p) = Wᵀ (c × o) · dy_img (o × p), straight into
                            // the channel-major input gradient (the columns of dyt for the image).
                            for (i, dxi) in dxc.chunks_exact_mut(in_img).enumerate() {
                                let dyi = MatRef { data: &dyt[i * p..], rs: np, cs: 1 };
                                let dxi = kernels::gemm_uninit(g.c, p, g.o, MatRef::rows(wrt, g.o), dyi, dxi);
                                if fuse.relu_input {
                                    let xi = &xc[i * in_img..][..in_img];
                                    dxi.iter_mut().zip(xi).for_each(|(d, x)| {
                                        if *x <= 0.0 {
                                            *d = 0.0
                                        }
                                    });
                                }
                            }
                        }
                        if let Some(dxc) = dxc {
                            let drows = resized(&mut s.c, np * q);
                            let dytt = MatRef::rows(dyt, np).t();
                            kernels::gemm(np, q, g.o, dytt, MatRef::rows(wr, q), drows, false);
                            let mask = fuse.relu_input.then_some(xc);
                            kernels::row2im(&s.c[..np * q], &g, imgs, mask, None, dxc, &mut s.k);
                        }
                    } else {
                        let dym: &[f32] = if fuse.relu_output {
                            let m = resized(&mut s.c, imgs * out_img);
                            kernels::masked(dyc, yc, g.c, hw, m, &mut part.db);
                            &s.c[..imgs * out_img]
                        } else {
                            kernels::channel_sums(dyc, g.c, hw, &mut part.db);
                            dyc
                        };
                        let rows = resized(&mut s.a, np * q);
                        kernels::im2row(dym, &g, imgs, false, rows, &mut s.k);
                        let rows = &s.a[..np * q];
                        if need_w {
                            let xt = resized(&mut s.b, g.o * np);
                            kernels::to_channel_major(xc, imgs, g.o, p, fuse.relu_input, None, xt, None, imgs);
                            let xt = MatRef::rows(&s.b[..g.o * np], np);
                            kernels::gemm(g.o, q, np, xt, MatRef::rows(rows, q), part_dw, !first_dw);
                        }
                        if let Some(dxc) = dxc {
                            let dxp = resized(&mut s.b, np * g.o);
                            kernels::gemm(np, g.o, q, MatRef::rows(rows, q), MatRef::rows(wrt, g.o), dxp, false);
                            let mask = fuse.relu_input.then_some(xc);
                            kernels::from_pixel_major(&s.b[..np * g.o], imgs, g.o, p, None, false, mask, dxc);
                        }
                    }
                };
                let partials: Vec<Partial> = grouped
                    .into_par_iter()
                    .map(|items| {
                        let mut part = Partial::take(sums_len, out_channels);
                        with_buffers(|s| {
                            for (c0, chunks, dxc) in items {
                                process(&mut part, s, c0, chunks, dxc);
                            }
                        });
                        part
                    })
                    .collect();
                let ran: Vec<&Partial> = partials.iter().filter(|s| s.ran).collect();
                let mut db = vec![0.0f32; out_channels];
                for s in &ran {
                    db.iter_mut().zip(&s.db).for_each(|(a, b)| *a += b);
                }
                let dw = if need_w {
                    sum_partials(&ran.iter().map(|s| &s.dw[..dw_len]).collect::<Vec<_>>(), dw_len)
                } else {
                    Vec::new()
                };
                drop(ran);
                partials.into_iter().for_each(Partial::give_back);
                if !need_w {
                    return Ok((dw, db));
                }
                if let Some(tile) = wino {
                    return Ok((winograd::weight_grad(&dw, g.o, g.c, tile), db));
                }
                // dw was summed in the row matrix's column order (o, kh, kw, c).
                Ok((kernels::weight_from_rows(&dw, &g), db))
            })?;
            let (dw, db) = total;
            // SAFETY: with dx_len > 0 every chunk went through `process`, which initialised it
            // (the 1×1 path with its gemms, the others with `zeroed`); an error above returned
            // before this line.
            unsafe { dx.set_len(dx_len) };
            let dev = Device::Cpu;
            let dx = if need_x { Some(Tensor::from_vec(dx, x.shape(), &dev)?) } else { None };
            let dw = if need_w { Some(Tensor::from_vec(dw, w.shape(), &dev)?) } else { None };
            let db = if need_b { Some(Tensor::from_vec(db, b.shape(), &dev)?) } else { None };
            Ok((dx, dw, db))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{rand_tensor, rel_err};
    use candle_core::Var;
    use rand::{Rng, SeedableRng};

    type ConvFn = fn(&Tensor, &Tensor, Option<&Tensor>, usize, usize, Fuse) -> Result<Tensor>;

    /// Output and the gradients of x, w and b of Σ y ⊙ r, by `f`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        f: ConvFn,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        r: &Tensor,
        s: usize,
        p: usize,
        fuse: Fuse,
    ) -> Vec<Tensor> {
        let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let bv = b.map(|b| Var::from_tensor(b).unwrap());
        let y = f(xv.as_tensor(), wv.as_tensor(), bv.as_ref().map(|b| b.as_tensor()), s, p, fuse).unwrap();
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out =
            vec![y.clone(), grads.get(xv.as_tensor()).unwrap().clone(), grads.get(wv.as_tensor()).unwrap().clone()];
        if let Some(bv) = &bv {
            out.push(grads.get(bv.as_tensor()).unwrap().clone());
        }
        out
    }

    /// y, dx, dw (and db) of `fast` within 1e-4 relative of `reference`'s.
    fn assert_close(fast: &[Tensor], reference: &[Tensor], what: &str) {
        assert_eq!(fast.len(), reference.len());
        for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(fast.iter().zip(reference)) {
            let e = rel_err(a, b);
            assert!(e <= 1e-4, "{name}: relative error {e:e} for {what}");
        }
    }

    /// Random shapes with strides 1–3, paddings up to k − 1, odd sizes, with and without bias,
    /// every fusion: values and gradients of the fast op against candle's ops.
    fn check_random(transpose: bool, cases: usize, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let fuses = [Fuse::NONE, Fuse::RELU_OUT, Fuse::RELU_IN, Fuse::RELU_BOTH];
        let mut done = 0;
        while done < cases {
            let (n, c, o) = (rng.random_range(1..5), rng.random_range(1..7), rng.random_range(1..7));
            let (h, wd) = (rng.random_range(1..12), rng.random_range(1..12));
            let k = rng.random_range(1..6);
            let (s, p) = (rng.random_range(1..4), rng.random_range(0..k));
            let fuse = fuses[rng.random_range(0..4)];
            let bias = rng.random_bool(0.7);
            let x = rand_tensor(&mut rng, &[n, c, h, wd], -1.0, 1.0);
            let (w, out_c, fast_fn, ref_fn): (Tensor, usize, ConvFn, ConvFn) = if transpose {
                if (h - 1) * s + k <= 2 * p || (wd - 1) * s + k <= 2 * p {
                    continue;
                }
                (rand_tensor(&mut rng, &[c, o, k, k], -1.0, 1.0), o, conv_transpose2d, conv_transpose2d_reference)
            } else {
                if h + 2 * p < k || wd + 2 * p < k {
                    continue;
                }
                (rand_tensor(&mut rng, &[o, c, k, k], -1.0, 1.0), o, conv2d, conv2d_reference)
            };
            let b = bias.then(|| rand_tensor(&mut rng, &[out_c], -1.0, 1.0));
            let y_ref = ref_fn(&x, &w, b.as_ref(), s, p, fuse).unwrap();
            let r = rand_tensor(&mut rng, y_ref.dims(), -1.0, 1.0);
            let fast = run(fast_fn, &x, &w, b.as_ref(), &r, s, p, fuse);
            let what =
                format!("transpose={transpose} x={:?} w={:?} s={s} p={p} {fuse:?} bias={bias}", x.dims(), w.dims());
            let e = rel_err(&fast[0], &y_ref);
            assert!(e <= 1e-4, "y: relative error {e:e} for {what}");
            // candle 0.11's conv2d backward takes the input-gradient's output padding from the
            // height alone, which breaks strided convolutions of non-square inputs; there the
            // gradients are checked by Euler's theorem instead: y is positively homogeneous of
            // degree 1 in (x, b) and in (w, b), relus included, so with L = Σ y ⊙ r,
            // Σ x ⊙ ∂L/∂x + Σ b ⊙ ∂L/∂b = L = Σ w ⊙ ∂L/∂w + Σ b ⊙ ∂L/∂b.
            if transpose || s == 1 || h == wd {
                let reference = run(ref_fn, &x, &w, b.as_ref(), &r, s, p, fuse);
                for (name, (a, b)) in ["dx", "dw", "db"].iter().zip(fast[1..].iter().zip(&reference[1..])) {
                    let e = rel_err(a, b);
                    assert!(e <= 1e-4, "{name}: relative error {e:e} for {what}");
                }
            } else {
                let dot = |a: &Tensor, b: &Tensor| -> (f64, f64) {
                    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    a.iter().zip(&b).fold((0.0, 0.0), |(s, m), (x, y)| {
                        (s + (*x as f64) * (*y as f64), m + (*x as f64 * *y as f64).abs())
                    })
                };
                let (loss, scale) = dot(&fast[0], &r);
                let (xb, sx) = dot(&x, &fast[1]);
                let (wb, sw) = dot(&w, &fast[2]);
                let (bb, sb) = match &b {
                    Some(b) => dot(b, &fast[3]),
                    None => (0.0, 0.0),
                };
                let tol = 1e-4 * (scale + sx + sw + sb).max(1e-6);
                assert!((xb + bb - loss).abs() <= tol, "Euler (x, b): {} vs {loss} for {what}", xb + bb);
                assert!((wb + bb - loss).abs() <= tol, "Euler (w, b): {} vs {loss} for {what}", wb + bb);
            }
            done += 1;
        }
    }

    #[test]
    fn conv2d_matches_candle_forward_and_gradients_on_random_shapes() {
        check_random(false, 150, 1);
    }

    #[test]
    fn conv_transpose2d_matches_candle_forward_and_gradients_on_random_shapes() {
        check_random(true, 150, 2);
    }

    /// The row-matrix path's units ([`chunks_per_unit`]) change how many images a gemm covers,
    /// not what is computed: y, dx, dw and db have the same bits as with one chunk a unit, on
    /// a 4×4 layer on 7×7 maps (36 rows an image) with an image count (30) that gives groups of
    /// two units and leaves the last unit and the last group short, with and without bias and
    /// fusions; and they match candle's ops.
    #[test]
    fn units_keep_the_bits_of_one_chunk_a_unit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (n, c, o) = (30, 128, 32);
        let x = rand_tensor(&mut rng, &[n, c, 7, 7], -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[o, c, 4, 4], -1.0, 1.0);
        let b = rand_tensor(&mut rng, &[o], -1.0, 1.0);
        let r = rand_tensor(&mut rng, &[n, o, 6, 6], -1.0, 1.0);
        // The shape must give units of several chunks, or the comparison below shows nothing.
        let g = ConvOp::new(1, 1, Fuse::NONE, false, None, ConvAlgorithm::Im2row).geom(x.dims(), w.dims()).unwrap();
        let chunk = chunk_images(&g, None);
        assert!(chunks_per_unit(&g, chunk, true, MIN_GEMM_ROWS) > 1, "chunk {chunk} already has enough rows");
        for (fuse, bias) in [(Fuse::NONE, true), (Fuse::RELU_BOTH, true), (Fuse::RELU_IN, false)] {
            let b = bias.then_some(&b);
            let with_units = run(conv2d, &x, &w, b, &r, 1, 1, fuse);
            let one_chunk: ConvFn = |x, w, b, s, p, fuse| {
                let mut op = ConvOp::new(s, p, fuse, false, None, ConvAlgorithm::Im2row);
                op.unit_rows = 0;
                build(x, w, b, op)
            };
            let without = run(one_chunk, &x, &w, b, &r, 1, 1, fuse);
            for (name, (a, z)) in ["y", "dx", "dw", "db"].iter().zip(with_units.iter().zip(&without)) {
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
                };
                assert!(bits(a) == bits(z), "{name} differs with units, {fuse:?} bias={bias}");
            }
            let reference = run(conv2d_reference, &x, &w, b, &r, 1, 1, fuse);
            assert_close(&with_units, &reference, &format!("units, {fuse:?} bias={bias}"));
        }
    }

    #[test]
    fn model_shapes_match_candle() {
        // The layers of the Sonnet VQ-VAE at batch 8 (several images per chunk and threads).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        type Case = (bool, [usize; 4], [usize; 4], usize, usize, Fuse);
        let cases: [Case; 6] = [
            (false, [8, 1, 28, 28], [16, 1, 4, 4], 2, 1, Fuse::RELU_OUT),
            (false, [8, 16, 14, 14], [32, 16, 4, 4], 2, 1, Fuse::RELU_OUT),
            (false, [8, 32, 7, 7], [8, 32, 3, 3], 1, 1, Fuse::RELU_BOTH),
            (false, [8, 32, 7, 7], [16, 32, 1, 1], 1, 0, Fuse::RELU_IN),
            (true, [8, 32, 7, 7], [32, 16, 4, 4], 2, 1, Fuse::RELU_BOTH),
            (true, [8, 16, 14, 14], [16, 1, 4, 4], 2, 1, Fuse::NONE),
        ];
        for (transpose, xd, wd, s, p, fuse) in cases {
            let x = rand_tensor(&mut rng, &xd, -1.0, 1.0);
            let w = rand_tensor(&mut rng, &wd, -1.0, 1.0);
            let b = rand_tensor(&mut rng, &[if transpose { wd[1] } else { wd[0] }], -1.0, 1.0);
            let (f, g): (ConvFn, ConvFn) =
                if transpose { (conv_transpose2d, conv_transpose2d_reference) } else { (conv2d, conv2d_reference) };
            let r = rand_tensor(&mut rng, g(&x, &w, Some(&b), s, p, fuse).unwrap().dims(), -1.0, 1.0);
            let fast = run(f, &x, &w, Some(&b), &r, s, p, fuse);
            let reference = run(g, &x, &w, Some(&b), &r, s, p, fuse);
            assert_close(&fast, &reference, &format!("x {xd:?} w {wd:?}"));
        }
    }

    #[test]
    fn gradients_are_the_same_on_every_call() {
        // The weight gradient sums over chunks of images on several threads; the sum must not
        // depend on which thread took which chunk (resumed runs are compared bit for bit).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x = rand_tensor(&mut rng, &[64, 32, 7, 7], -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[16, 32, 3, 3], -1.0, 1.0);
        let b = rand_tensor(&mut rng, &[16], -1.0, 1.0);
        let r = rand_tensor(&mut rng, &[64, 16, 7, 7], -1.0, 1.0);
        let first = run(conv2d, &x, &w, Some(&b), &r, 1, 1, Fuse::RELU_BOTH);
        for _ in 0..5 {
            let again = run(conv2d, &x, &w, Some(&b), &r, 1, 1, Fuse::RELU_BOTH);
            for (a, b) in first.iter().zip(&again) {
                let (a, b) = (
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    #[test]
    fn weight_gradients_do_not_read_what_the_pooled_sums_held() {
        // The groups' weight-gradient sums come from a pool with whatever an earlier call left
        // in them; poisoned with NaN, every path must still give candle's gradients (the first
        // gemm of a group writes its sums instead of adding into them).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        type Case = (&'static [usize], &'static [usize], usize, usize, bool, ConvFn, ConvFn);
        let cases: [Case; 5] = [
            (&[9, 8, 9, 9], &[12, 8, 4, 4], 2, 1, false, conv2d, conv2d_reference),
            (&[9, 8, 7, 7], &[12, 8, 1, 1], 1, 0, false, conv2d, conv2d_reference),
            (&[9, 8, 7, 7], &[12, 8, 3, 3], 1, 1, false, conv2d, conv2d_reference),
            (&[9, 8, 7, 7], &[12, 8, 3, 3], 1, 1, false, conv2d_winograd4, conv2d_reference),
            (&[9, 8, 5, 5], &[8, 6, 4, 4], 2, 1, true, conv_transpose2d, conv_transpose2d_reference),
        ];
        for (xd, wd, st, pad, transpose, fast_fn, ref_fn) in cases {
            {
                let mut pool = PARTIAL_SUMS.lock().unwrap();
                pool.clear();
                pool.extend((0..POOLED_SUMS).map(|_| vec![f32::NAN; 1 << 18]));
            }
            let x = rand_tensor(&mut rng, xd, -1.0, 1.0);
            let w = rand_tensor(&mut rng, wd, -1.0, 1.0);
            let out_c = if transpose { wd[1] } else { wd[0] };
            let b = rand_tensor(&mut rng, &[out_c], -1.0, 1.0);
            let y = ref_fn(&x, &w, Some(&b), st, pad, Fuse::RELU_OUT).unwrap();
            let r = rand_tensor(&mut rng, y.dims(), -1.0, 1.0);
            let fast = run(fast_fn, &x, &w, Some(&b), &r, st, pad, Fuse::RELU_OUT);
            let reference = run(ref_fn, &x, &w, Some(&b), &r, st, pad, Fuse::RELU_OUT);
            for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(fast.iter().zip(&reference)) {
                let finite = a.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
                assert!(finite, "{name}: not finite for x {xd:?} w {wd:?} transpose {transpose}");
                let e = rel_err(a, b);
                assert!(e <= 1e-4, "{name}: relative error {e:e} for x {xd:?} w {wd:?} transpose {transpose}");
            }
        }
    }

    #[test]
    fn a_hand_computed_convolution_and_its_gradients() {
        // x = [[1, 2], [3, 4]], w = [[1, −1], [2, 0.5]] (1×1 channels), stride 1, pad 0: one
        // output 1·1 − 2 + 3·2 + 4·0.5 = 7, plus bias 0.5; dL/dw = x, dL/dx = w, dL/db = 1.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::new(&[[[[1f32, -1.], [2., 0.5]]]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.5f32], &dev).unwrap()).unwrap();
        let y = conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1, 0, Fuse::NONE).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![7.5]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let flat = |t: &Var| g.get(t.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&w), vec![1., 2., 3., 4.]);
        assert_eq!(flat(&x), vec![1., -1., 2., 0.5]);
        assert_eq!(flat(&b), vec![1.]);
        // Output relu: −7.5 after negating the bias and weights → 0 output, zero gradients.
        let y = conv2d(
            x.as_tensor(),
            &w.as_tensor().neg().unwrap(),
            Some(&b.as_tensor().neg().unwrap()),
            1,
            0,
            Fuse::RELU_OUT,
        )
        .unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn pointwise_convolutions_give_the_bits_of_the_row_matrix_path() {
        // The 1×1 path reads the channel-major data in place; it must sum the same products in
        // the same order as the general path, so that no run's numbers move. The model's 1×1
        // shapes (residual 32 → 128, pre-VQ 128 → 64, FSQ/LFQ projections 64 → 4 → 64) at
        // batch 128 (several images per chunk), and odd ones, with every fusion and bias.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let shapes: [([usize; 4], usize); 7] = [
            ([128, 32, 7, 7], 128),
            ([128, 128, 7, 7], 64),
            ([128, 64, 7, 7], 4),
            ([128, 4, 7, 7], 64),
            ([3, 5, 9, 4], 7),
            ([1, 1, 1, 1], 1),
            ([17, 40, 14, 14], 33),
        ];
        let fuses = [Fuse::NONE, Fuse::RELU_OUT, Fuse::RELU_IN, Fuse::RELU_BOTH];
        for (i, (xd, o)) in shapes.into_iter().enumerate() {
            let x = rand_tensor(&mut rng, &xd, -1.0, 1.0);
            let w = rand_tensor(&mut rng, &[o, xd[1], 1, 1], -1.0, 1.0);
            let b = rand_tensor(&mut rng, &[o], -1.0, 1.0);
            let r = rand_tensor(&mut rng, &[xd[0], o, xd[2], xd[3]], -1.0, 1.0);
            let fuse = fuses[i % 4];
            let with = |legacy: bool| {
                LEGACY_POINTWISE.with(|c| c.set(legacy));
                let out = run(conv2d, &x, &w, Some(&b), &r, 1, 0, fuse);
                LEGACY_POINTWISE.with(|c| c.set(false));
                out
            };
            let (direct, general) = (with(false), with(true));
            for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(direct.iter().zip(&general)) {
                let (a, b) = (
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                assert_eq!(differ, 0, "{name}: {differ} of {} differ for x {xd:?}, {o} out, {fuse:?}", a.len());
            }
            // And the values are right (the general path is checked against candle elsewhere).
            let reference = run(conv2d_reference, &x, &w, Some(&b), &r, 1, 0, fuse);
            assert!(rel_err(&direct[1], &reference[1]) <= 1e-4);
        }
    }

    fn conv2d_winograd(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: usize, fuse: Fuse) -> Result<Tensor> {
        conv2d_using(x, w, b, s, p, fuse, ConvAlgorithm::Winograd)
    }

    fn conv2d_winograd4(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: usize, fuse: Fuse) -> Result<Tensor> {
        conv2d_using(x, w, b, s, p, fuse, ConvAlgorithm::Winograd4)
    }

    /// F(2×2, 3×3); F(4×4, 3×3) with F(3×3, 4×4) for 4×4 kernels.
    const WINOGRADS: [(&str, ConvFn); 2] = [("F2", conv2d_winograd), ("F4", conv2d_winograd4)];

    #[test]
    fn winograd_matches_candle_forward_and_gradients() {
        // 3×3 and 4×4 kernels, stride 1, padding 1 on random shapes: odd and even sides
        // (partial tiles), the smallest images, non-square ones, one and many channels and
        // images (several per chunk), every fusion, with and without bias; and the model's
        // shapes at batch 16 (the discriminator's 4×4 ones too).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        let fuses = [Fuse::NONE, Fuse::RELU_OUT, Fuse::RELU_IN, Fuse::RELU_BOTH];
        let mut shapes: Vec<([usize; 4], usize, usize)> = (0..60)
            .map(|i| {
                let k = 3 + i % 2;
                let side = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_range(k - 2..12);
                let x = [rng.random_range(1..6), rng.random_range(1..9), side(&mut rng), side(&mut rng)];
                // (4×4 kernels take F(3×3, 4×4) from 8 outputs on.)
                let o = if k == 4 { rng.random_range(8..20) } else { rng.random_range(1..9) };
                (x, o, k)
            })
            .collect();
        shapes.extend([
            ([16, 128, 7, 7], 128, 3),
            ([16, 128, 7, 7], 32, 3),
            ([16, 64, 7, 7], 128, 3),
            ([3, 70, 8, 8], 65, 3),
            ([16, 128, 7, 7], 256, 4),
            ([16, 256, 6, 6], 8, 4),
            ([3, 70, 8, 9], 65, 4),
        ]);
        for (i, (xd, o, k)) in shapes.into_iter().enumerate() {
            let fuse = fuses[i % 4];
            let x = rand_tensor(&mut rng, &xd, -1.0, 1.0);
            let w = rand_tensor(&mut rng, &[o, xd[1], k, k], -1.0, 1.0);
            let b = (i % 3 != 0).then(|| rand_tensor(&mut rng, &[o], -1.0, 1.0));
            let r = rand_tensor(&mut rng, &[xd[0], o, xd[2] + 3 - k, xd[3] + 3 - k], -1.0, 1.0);
            let reference = run(conv2d_reference, &x, &w, b.as_ref(), &r, 1, 1, fuse);
            for (tile, op) in WINOGRADS {
                let fast = run(op, &x, &w, b.as_ref(), &r, 1, 1, fuse);
                assert_close(&fast, &reference, &format!("{tile}: x {xd:?}, {o} out, {k}×{k}, {fuse:?}"));
            }
        }
    }

    #[test]
    fn winograd_applies_to_its_kernels_with_stride_1_padding_1_only() {
        // Other shapes take the im2row path whatever the algorithm says: the same bits. So do
        // 4×4/1/1 kernels under F(2×2, 3×3), and under F4 with fewer than 8 outputs (4 here).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(32);
        for (tile, op) in WINOGRADS {
            let others =
                [(3, 2, 1), (3, 1, 0), (3, 1, 2), (4, 2, 1), (4, 1, 0), (4, 1, 2), (4, 1, 1), (1, 1, 0), (5, 1, 2)];
            for (k, s, p) in others {
                let x = rand_tensor(&mut rng, &[2, 5, 9, 8], -1.0, 1.0);
                let w = rand_tensor(&mut rng, &[4, 5, k, k], -1.0, 1.0);
                let a = op(&x, &w, None, s, p, Fuse::NONE).unwrap();
                let b = conv2d(&x, &w, None, s, p, Fuse::NONE).unwrap();
                assert_eq!(rel_err(&a, &b), 0.0, "{tile}: k {k} s {s} p {p}");
            }
            // Zero input or output channels: no Winograd planes to build, the im2row answer.
            for (c, o) in [(0, 4), (5, 0)] {
                let x = rand_tensor(&mut rng, &[2, c, 6, 6], -1.0, 1.0);
                let w = rand_tensor(&mut rng, &[o, c, 3, 3], -1.0, 1.0);
                let a = op(&x, &w, None, 1, 1, Fuse::NONE).unwrap();
                assert_eq!(a.dims(), &[2, o, 6, 6]);
                assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 2 * o * 36]);
            }
            // And 3×3/1/1 (and 4×4/1/1 under F4) does take the Winograd path: it rounds
            // differently from im2row.
            let ks: &[usize] = if tile == "F2" { &[3] } else { &[3, 4] };
            for &k in ks {
                let x = rand_tensor(&mut rng, &[4, 32, 7, 7], -1.0, 1.0);
                let w = rand_tensor(&mut rng, &[16, 32, k, k], -1.0, 1.0);
                let a = op(&x, &w, None, 1, 1, Fuse::NONE).unwrap();
                let b = conv2d(&x, &w, None, 1, 1, Fuse::NONE).unwrap();
                let e = rel_err(&a, &b);
                assert!(e > 0.0 && e < 1e-5, "{tile} {k}×{k}: {e:e}");
            }
        }
        // The two tiles are different computations.
        let x = rand_tensor(&mut rng, &[4, 32, 7, 7], -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[16, 32, 3, 3], -1.0, 1.0);
        let (a, b) = (
            conv2d_winograd(&x, &w, None, 1, 1, Fuse::NONE).unwrap(),
            conv2d_winograd4(&x, &w, None, 1, 1, Fuse::NONE).unwrap(),
        );
        assert!(rel_err(&a, &b) > 0.0);
    }

    #[test]
    fn a_known_output_is_reused_only_when_its_shape_fits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = rand_tensor(&mut rng, &[2, 3, 5, 5], -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[4, 3, 3, 3], -1.0, 1.0);
        let y = conv2d(&x, &w, None, 1, 1, Fuse::NONE).unwrap();
        // The forward pass copies what it is given (a stand-in of the right shape shows it).
        let stand_in = (&y + 1.0).unwrap();
        let again = conv2d_known(&x, &w, None, 1, 1, &stand_in, ConvAlgorithm::Im2row).unwrap();
        assert_eq!(rel_err(&again, &stand_in), 0.0);
        let e = conv2d_known(&x, &w, None, 2, 1, &y, ConvAlgorithm::Im2row).unwrap_err().to_string();
        assert!(e.contains("known output [2, 4, 5, 5]") && e.contains("[2, 4, 3, 3]"), "{e}");
    }

    #[test]
    fn no_gradient_is_computed_for_an_input_that_does_not_need_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let x = rand_tensor(&mut rng, &[2, 3, 5, 5], -1.0, 1.0);
        let w = Var::from_tensor(&rand_tensor(&mut rng, &[4, 3, 3, 3], -1.0, 1.0)).unwrap();
        let y = conv2d(&x, w.as_tensor(), None, 1, 1, Fuse::NONE).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        assert!(g.get(w.as_tensor()).is_some());
    }
}
