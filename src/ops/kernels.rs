//! CPU kernels on plain `f32` slices: im2row / row2im, the layout changes between NCHW and
//! channel-major matrices, and a single-threaded gemm. They work on a chunk of images at a
//! time and write into buffers the caller owns; the convolution ops run chunks in parallel.

use super::transpose::{self, Post, TO_PIXELS, TO_PLANES};

/// A convolution seen from its input side: input (n, c, h, w) → output (n, o, ho, wo) with an
/// (o, c, kh, kw) kernel. A transposed convolution uses the geometry of the convolution it
/// is the transpose of (its output is this geometry's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// Columns of the row matrix (values under one kernel placement): c·kh·kw.
    pub fn q(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.ho * self.wo
    }
    /// Input pixels per image.
    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Sides of the zero-padded input plane.
    pub fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }
}

/// Reused per-thread buffers of the kernels.
#[derive(Default)]
pub struct Scratch {
    padded: Vec<f32>,
}

/// The first `len` elements of `v`, grown (with zeros) if it is shorter: a reusable buffer.
pub(crate) fn resized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Whether the CPU has AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide_simd() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Defines `fn $name(..) $body` (with the visibility given) so that the body runs compiled for AVX2 + FMA when the
/// CPU has them (the layout passes are loops the compiler vectorises, and the baseline x86-64
/// target gives it only SSE2), and as compiled for the baseline otherwise.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            if $crate::ops::kernels::wide_simd() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: the CPU has AVX2 and FMA, checked at run time.
                return unsafe { wide($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

pub(crate) use simd_dispatch;

/// Kernel (o, c, kh, kw) → (o, kh, kw, c): the column order of [`im2row`]'s row matrix.
pub fn weight_to_rows(w: &[f32], g: &Geom) -> Vec<f32> {
    reorder_weight(w, g, true)
}

/// The inverse of [`weight_to_rows`]: (o, kh, kw, c) → (o, c, kh, kw).
pub fn weight_from_rows(w: &[f32], g: &Geom) -> Vec<f32> {
    reorder_weight(w, g, false)
}

fn reorder_weight(w: &[f32], g: &Geom, to_rows: bool) -> Vec<f32> {
    let (c, khw) = (g.c, g.kh * g.kw);
    let mut out = vec![0.0f32; g.o * g.q()];
    for (src, dst) in w.chunks_exact(g.q().max(1)).zip(out.chunks_exact_mut(g.q().max(1))) {
        for ci in 0..c {
            for ij in 0..khw {
                let (kernel_major, channels_last) = (ci * khw + ij, ij * c + ci);
                if to_rows {
                    dst[channels_last] = src[kernel_major];
                } else {
                    dst[kernel_major] = src[channels_last];
                }
            }
        }
    }
    out
}

simd_dispatch! {
    /// Row matrix of `imgs` images (imgs·p × q) into `rows`: row (image, oy, ox), column
    /// (i, j, ci) holds x[image, ci, oy·s + i − pad, ox·s + j − pad] (0 in the padding), through
    /// relu when `relu`. `x` holds those images (imgs, c, h, w).
    ///
    /// The images are first copied (through the relu) into zero-padded channels-last planes
    /// (hp, wp, c). A row's kw·c values for one kernel row i are then one contiguous run there:
    /// the matrix is built from copies of whole runs, not gathered value by value.
    pub fn im2row(x: &[f32], g: &Geom, imgs: usize, relu: bool, rows: &mut [f32], scratch: &mut Scratch) {
        let (p, q, c) = (g.p(), g.q(), g.c);
        let (hp, wp) = g.padded();
        let img_len = hp * wp * c;
        assert!(x.len() >= imgs * c * g.hw() && rows.len() >= imgs * p * q);
        if c == 0 || g.hw() == 0 {
            // No input values: every entry is padding.
            rows[..imgs * p * q].fill(0.0);
            return;
        }
        if g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0 {
            // A 1×1, stride-1, unpadded convolution's row matrix is its images channels last:
            // one transposing pass straight into it, no padded planes in between.
            for (dst, src) in rows[..imgs * p * q].chunks_exact_mut(p * q).zip(x.chunks_exact(c * g.hw())) {
                transpose::pass::<TO_PIXELS>(src, c, g.hw(), Post { relu, ..Post::default() }, |pos| pos * c, dst);
            }
            return;
        }
        let padded = resized(&mut scratch.padded, imgs * img_len);
        let (pad, row_len) = (g.pad, wp * c);
        for (dst, src) in padded.chunks_exact_mut(img_len).zip(x.chunks_exact(c * g.hw())) {
            // Zeros in the padding only: the top and bottom rows, and the left and right runs.
            dst[..pad * row_len].fill(0.0);
            dst[(pad + g.h) * row_len..].fill(0.0);
            for y in 0..g.h {
                let r = &mut dst[(y + pad) * row_len..][..row_len];
                r[..pad * c].fill(0.0);
                r[(pad + g.w) * c..].fill(0.0);
            }
            // The interior, channels last (8 × 8 blocks transposed in registers).
            let at = transpose::in_plane(g.w, wp, pad, c);
            transpose::pass::<TO_PIXELS>(src, c, g.hw(), Post { relu, ..Post::default() }, at, dst);
        }
        let run = g.kw * c;
        for (pos, row) in rows[..imgs * p * q].chunks_exact_mut(q).enumerate() {
            let (img, op) = (pos / p, pos % p);
            let (oy, ox) = (op / g.wo, op % g.wo);
            let plane = &scratch.padded[img * img_len..][..img_len];
            for (i, dst) in row.chunks_exact_mut(run).enumerate() {
                dst.copy_from_slice(&plane[((oy * g.stride + i) * wp + ox * g.stride) * c..][..run]);
            }
        }
    }
}

simd_dispatch! {
    /// The adjoint of [`im2row`] for `imgs` images: every row-matrix entry summed into the input
    /// pixel it was read from, written to `out` (imgs, c, h, w), plus `bias[c]`, zeroed where
    /// `mask` (laid out like `out`) is ≤ 0 (the gradient of an input relu).
    pub fn row2im(
        rows: &[f32],
        g: &Geom,
        imgs: usize,
        mask: Option<&[f32]>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let (p, q, c, hw) = (g.p(), g.q(), g.c, g.hw());
        let (hp, wp) = g.padded();
        if hw == 0 || c == 0 {
            return;
        }
        assert!(rows.len() >= imgs * p * q && out.len() >= imgs * c * hw);
        let run = g.kw * c;
        // One image at a time: its channels-last accumulator stays in cache.
        let acc = resized(&mut scratch.padded, hp * wp * c);
        let zeros = vec![0.0f32; if bias.is_some() { 0 } else { c }];
        for (img, dst) in out[..imgs * c * hw].chunks_exact_mut(c * hw).enumerate() {
            acc.fill(0.0);
            for (op, row) in rows[img * p * q..][..p * q].chunks_exact(q).enumerate() {
                let (oy, ox) = (op / g.wo, op % g.wo);
                for (i, src) in row.chunks_exact(run).enumerate() {
                    let a = &mut acc[((oy * g.stride + i) * wp + ox * g.stride) * c..][..run];
                    a.iter_mut().zip(src).for_each(|(a, v)| *a += v);
                }
            }
            // acc + bias (0 without one: adding it keeps the bits this pass always had), zeroed
            // where the mask is ≤ 0.
            let mask = mask.map(|m| &m[img * c * hw..][..c * hw]);
            let at = transpose::in_plane(g.w, wp, g.pad, c);
            let post = Post { bias: Some(bias.unwrap_or(&zeros)), relu: false, mask };
            transpose::pass::<TO_PLANES>(acc, c, hw, post, at, dst);
        }
    }
}

simd_dispatch! {
    /// (imgs, c, p) → (c, imgs·p) into `out`, through relu when `relu`, zeroed where `mask` (laid
    /// out like `x`) is ≤ 0. Adds each channel's sum of the result to `sums` when given: one
    /// partial sum per run of `sum_every` images, added in image order (so that a call on k
    /// chunks of `sum_every` images adds the bits that k calls, one a chunk, would add).
    pub fn to_channel_major(
        x: &[f32],
        imgs: usize,
        c: usize,
        p: usize,
        relu: bool,
        mask: Option<&[f32]>,
        out: &mut [f32],
        sums: Option<&mut [f32]>,
        sum_every: usize,
    ) {
        let mut sums = sums;
        let np = imgs * p;
        let sum_every = sum_every.max(1);
        for ci in 0..c {
            let mut acc = 0.0f32;
            for img in 0..imgs {
                let src = &x[(img * c + ci) * p..][..p];
                let dst = &mut out[ci * np + img * p..][..p];
                match mask {
                    Some(m) => {
                        let m = &m[(img * c + ci) * p..][..p];
                        for ((d, v), m) in dst.iter_mut().zip(src).zip(m) {
                            *d = if *m > 0.0 { *v } else { 0.0 };
                        }
                    }
                    None if relu => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v.max(0.0)),
                    None => dst.copy_from_slice(src),
                }
                if let Some(s) = sums.as_deref_mut() {
                    acc += dst.iter().sum::<f32>();
                    if (img + 1) % sum_every == 0 || img + 1 == imgs {
                        s[ci] += acc;
                        acc = 0.0;
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// (imgs·p, c) → (imgs, c, p) into `out`, plus `bias[c]`, through relu when `relu`, zeroed
    /// where `mask` (laid out like `out`) is ≤ 0.
    pub fn from_pixel_major(
        x: &[f32],
        imgs: usize,
        c: usize,
        p: usize,
        bias: Option<&[f32]>,
        relu: bool,
        mask: Option<&[f32]>,
        out: &mut [f32],
    ) {
        if c == 0 || p == 0 {
            return;
        }
        assert!(x.len() >= imgs * p * c && out.len() >= imgs * c * p);
        // x + bias (0 without one, as this pass always added), relu, then the mask.
        let zeros = vec![0.0f32; if bias.is_some() { 0 } else { c }];
        let bias = Some(bias.unwrap_or(&zeros));
        for (img, dst) in out[..imgs * c * p].chunks_exact_mut(c * p).enumerate() {
            let src = &x[img * p * c..][..p * c];
            let mask = mask.map(|m| &m[img * c * p..][..c * p]);
            transpose::pass::<TO_PLANES>(src, c, p, Post { bias, relu, mask }, |pos| pos * c, dst);
        }
    }
}

/// The transpose of a row-major (r × c) matrix, in 16 × 16 blocks.
pub fn transposed(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    const B: usize = 16;
    let mut out = vec![0.0f32; r * c];
    for i0 in (0..r).step_by(B) {
        for j0 in (0..c).step_by(B) {
            for i in i0..(i0 + B).min(r) {
                for j in j0..(j0 + B).min(c) {
                    out[j * r + i] = x[i * c + j];
                }
            }
        }
    }
    out
}

/// `x ⊙ [mask > 0]` into `out` (layout (imgs, c, p) kept), adding per-channel sums to `sums`.
pub fn masked(x: &[f32], mask: &[f32], c: usize, p: usize, out: &mut [f32], sums: &mut [f32]) {
    for (plane_ix, ((d, v), m)) in out.chunks_exact_mut(p).zip(x.chunks_exact(p)).zip(mask.chunks_exact(p)).enumerate()
    {
        let mut acc = 0.0f32;
        for ((d, v), m) in d.iter_mut().zip(v).zip(m) {
            *d = if *m > 0.0 { *v } else { 0.0 };
            acc += *d;
        }
        sums[plane_ix % c] += acc;
    }
}

/// Adds the per-channel sums of (imgs, c, p) to `sums`.
pub fn channel_sums(x: &[f32], c: usize, p: usize, sums: &mut [f32]) {
    for (plane_ix, v) in x.chunks_exact(p).enumerate() {
        sums[plane_ix % c] += v.iter().sum::<f32>();
    }
}

/// A row-major view of a matrix: element (r, c) at `data[r·rs + c·cs]`. Transposing is
/// swapping the strides.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, rs: cols, cs: 1 }
    }
    pub fn t(self) -> Self {
        MatRef { data: self.data, rs: self.cs, cs: self.rs }
    }
    fn reach(&self, r: usize, c: usize) -> usize {
        if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * self.rs + (c - 1) * self.cs + 1
        }
    }
}

/// dst (m × n, row-major) = a (m × k) · b (k × n), or dst += a · b with `accumulate`; on the
/// calling thread.
pub fn gemm(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, dst: &mut [f32], accumulate: bool) {
    gemm_with(m, n, k, a, b, dst, accumulate, gemm::Parallelism::None)
}

/// [`gemm()`] on all of rayon's pool: the gemm crate splits the m × n blocks of dst among the
/// threads and packs each operand block once for all of them. Every element of dst is still
/// one sum over k in the same order, so the result does not depend on the thread count.
pub fn gemm_parallel(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, dst: &mut [f32], accumulate: bool) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm_with(m, n, k, a, b, dst, accumulate, par)
}

/// A vector of `len` elements whose chunks of `chunk` elements `fill(chunk index, chunk)`
/// writes in parallel, straight into the vector's uninitialised capacity: no zero-fill first
/// (a pass over memory as large as the vector, for an output every element of which is
/// written anyway).
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
pub(crate) unsafe fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    // SAFETY: the caller's `fill` wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Zero-fills `buf` and returns it as initialised floats.
pub(crate) fn zeroed(buf: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    for v in buf.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just written, and MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(buf as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// [`gemm_parallel`] into a new buffer: dst = a · b, written by the gemm without the zero-fill a
/// `vec![0.0; m·n]` costs (a pass over memory as large as the output).
pub fn gemm_parallel_new(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
    let mut dst = Vec::with_capacity(m * n);
    if m == 0 || n == 0 || k == 0 {
        dst.resize(m * n, 0.0);
        return dst;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `gemm_raw` checks that the reads stay inside `a` and `b`; with `accumulate`
    // false the gemm does not read dst and writes each of its m·n elements (m, n, k > 0), so
    // the capacity is initialised when its length is set.
    unsafe {
        gemm_raw(m, n, k, a, b, dst.as_mut_ptr(), false, par);
        dst.set_len(m * n);
    }
    dst
}

/// [`gemm()`] (dst = a · b, on the calling thread) into the first m·n elements of an
/// uninitialised `dst`, returned initialised: no zero-fill first, for a destination the gemm
/// overwrites anyway. The same sums as [`gemm()`] with `accumulate` false.
pub fn gemm_uninit<'d>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    dst: &'d mut [std::mem::MaybeUninit<f32>],
) -> &'d mut [f32] {
    assert!(dst.len() >= m * n, "gemm destination too short");
    let dst = &mut dst[..m * n];
    if m > 0 && n > 0 {
        if k == 0 {
            dst.iter_mut().for_each(|v| {
                v.write(0.0);
            });
        } else {
            // SAFETY: `gemm_raw` checks the reads of `a` and `b`; with `accumulate` false it does
            // not read dst and writes each of its m·n elements (row stride n), all inside `dst`.
            unsafe { gemm_raw(m, n, k, a, b, dst.as_mut_ptr().cast::<f32>(), false, gemm::Parallelism::None) }
        }
    }
    // SAFETY: all m·n elements were written above (none when m·n = 0), and MaybeUninit<f32>
    // has f32's layout.
    unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// The gemm crate's call on checked operands and a raw row-major m × n dst.
///
/// # Safety
/// dst must be valid for writes of m·n elements (and for reads too with `accumulate`).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    dst: *mut f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    assert!(a.data.len() >= a.reach(m, k) && b.data.len() >= b.reach(k, n), "gemm operands too short");
    // SAFETY: the assert keeps the reads inside `a` and `b`; the caller vouches for dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_with(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    dst: &mut [f32],
    accumulate: bool,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.data.len() >= a.reach(m, k) && b.data.len() >= b.reach(k, n) && dst.len() >= m * n,
        "gemm operands too short"
    );
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assert keeps every write inside `dst` (m·n elements, row stride n).
    unsafe { gemm_raw(m, n, k, a, b, dst.as_mut_ptr(), accumulate, par) }
}
