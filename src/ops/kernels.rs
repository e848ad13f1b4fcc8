//! CPU kernels on plain `f32` slices: im2col / col2im, the layout changes between NCHW and
//! channel-major matrices, and a single-threaded gemm. They work on a chunk of images at a
//! time and write into buffers the caller owns; the convolution ops run chunks in parallel.

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
    /// Rows of the column matrix: c·kh·kw.
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

    /// For every kernel offset (i, j) and output pixel (oy, ox): the offset of the input pixel
    /// it reads in the zero-padded plane, (oy·s + i)·wp + ox·s + j (kh·kw·p entries, every one
    /// inside the padded plane).
    pub fn gather_table(&self) -> Vec<u32> {
        let (hp, wp) = self.padded();
        let mut t = Vec::with_capacity(self.kh * self.kw * self.p());
        for i in 0..self.kh {
            for j in 0..self.kw {
                for oy in 0..self.ho {
                    for ox in 0..self.wo {
                        t.push(((oy * self.stride + i) * wp + ox * self.stride + j) as u32);
                    }
                }
            }
        }
        assert!(t.iter().all(|&ix| (ix as usize) < hp * wp), "gather table leaves the padded plane");
        t
    }
}

/// Reused per-thread buffers of the kernels.
#[derive(Default)]
pub struct Scratch {
    padded: Vec<f32>,
}

fn resized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Column matrix of `imgs` images (q × imgs·p) into `cols`: row (ci, i, j), column
/// (image, oy, ox) holds x[image, ci, oy·s + i − pad, ox·s + j − pad] (0 in the padding),
/// through relu when `relu`. `x` holds those images; `table` is `g.gather_table()`.
///
/// The planes are first copied (through the relu) into zero-padded ones, so that every entry
/// is one table lookup with no bounds test.
#[allow(clippy::too_many_arguments)]
pub fn im2col(x: &[f32], g: &Geom, table: &[u32], imgs: usize, relu: bool, cols: &mut [f32], scratch: &mut Scratch) {
    let (p, khw) = (g.p(), g.kh * g.kw);
    let (hp, wp) = g.padded();
    let (np, planes, plane_len) = (imgs * p, imgs * g.c, hp * wp);
    assert!(table.len() == khw * p && x.len() >= planes * g.hw());
    let padded: &[f32] = if g.pad == 0 && !relu {
        &x[..planes * plane_len]
    } else {
        let buf = resized(&mut scratch.padded, planes * plane_len);
        for (dst, src) in buf.chunks_exact_mut(plane_len).zip(x.chunks_exact(g.hw())) {
            dst.fill(0.0);
            for (drow, srow) in dst[g.pad * wp..].chunks_exact_mut(wp).zip(src.chunks_exact(g.w)) {
                let d = &mut drow[g.pad..g.pad + g.w];
                if relu {
                    d.iter_mut().zip(srow).for_each(|(d, v)| *d = v.max(0.0));
                } else {
                    d.copy_from_slice(srow);
                }
            }
        }
        &scratch.padded[..planes * plane_len]
    };
    for (row, out) in cols[..g.q() * np].chunks_exact_mut(np).enumerate() {
        let (ci, ij) = (row / khw, row % khw);
        let t = &table[ij * p..][..p];
        for (img, dst) in out.chunks_exact_mut(p).enumerate() {
            let plane = &padded[(img * g.c + ci) * plane_len..][..plane_len];
            for (d, ix) in dst.iter_mut().zip(t) {
                // SAFETY: gather_table asserts every entry < hp·wp = plane.len().
                *d = unsafe { *plane.get_unchecked(*ix as usize) };
            }
        }
    }
}

/// The adjoint of [`im2col`] for `imgs` images: every column-matrix entry summed into the input
/// pixel it was read from, written to `out` (imgs, c, h, w), plus `bias[c]`, zeroed where
/// `mask` (laid out like `out`) is ≤ 0 (the gradient of an input relu).
#[allow(clippy::too_many_arguments)]
pub fn col2im(
    cols: &[f32],
    g: &Geom,
    table: &[u32],
    imgs: usize,
    mask: Option<&[f32]>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let (p, hw, khw) = (g.p(), g.hw(), g.kh * g.kw);
    let (hp, wp) = g.padded();
    let np = imgs * p;
    if hw == 0 {
        return;
    }
    assert!(table.len() == khw * p && cols.len() >= g.q() * np);
    let acc = resized(&mut scratch.padded, hp * wp);
    for (plane_ix, plane) in out[..imgs * g.c * hw].chunks_exact_mut(hw).enumerate() {
        let (img, ci) = (plane_ix / g.c, plane_ix % g.c);
        acc.fill(0.0);
        for ij in 0..khw {
            let row = &cols[(ci * khw + ij) * np + img * p..][..p];
            for (v, ix) in row.iter().zip(&table[ij * p..][..p]) {
                // SAFETY: gather_table asserts every entry < hp·wp = acc.len().
                unsafe { *acc.get_unchecked_mut(*ix as usize) += v };
            }
        }
        let b = bias.map_or(0.0, |b| b[ci]);
        for (y, drow) in plane.chunks_exact_mut(g.w).enumerate() {
            let arow = &acc[(y + g.pad) * wp + g.pad..][..g.w];
            match mask {
                Some(m) => {
                    let mrow = &m[plane_ix * hw + y * g.w..][..g.w];
                    for ((d, a), m) in drow.iter_mut().zip(arow).zip(mrow) {
                        *d = if *m > 0.0 { a + b } else { 0.0 };
                    }
                }
                None => drow.iter_mut().zip(arow).for_each(|(d, a)| *d = a + b),
            }
        }
    }
}

/// (imgs, c, p) → (c, imgs·p) into `out`, through relu when `relu`, zeroed where `mask` (laid
/// out like `x`) is ≤ 0. Adds each channel's sum of the result to `sums` when given.
#[allow(clippy::too_many_arguments)]
pub fn to_channel_major(
    x: &[f32],
    imgs: usize,
    c: usize,
    p: usize,
    relu: bool,
    mask: Option<&[f32]>,
    out: &mut [f32],
    mut sums: Option<&mut [f32]>,
) {
    let np = imgs * p;
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
            if sums.is_some() {
                acc += dst.iter().sum::<f32>();
            }
        }
        if let Some(s) = sums.as_deref_mut() {
            s[ci] += acc;
        }
    }
}

/// (c, imgs·p) → (imgs, c, p) into `out`, plus `bias[c]`, through relu when `relu`, zeroed
/// where `mask` (laid out like `out`) is ≤ 0.
#[allow(clippy::too_many_arguments)]
pub fn from_channel_major(
    x: &[f32],
    imgs: usize,
    c: usize,
    p: usize,
    bias: Option<&[f32]>,
    relu: bool,
    mask: Option<&[f32]>,
    out: &mut [f32],
) {
    let np = imgs * p;
    for img in 0..imgs {
        for ci in 0..c {
            let src = &x[ci * np + img * p..][..p];
            let dst = &mut out[(img * c + ci) * p..][..p];
            let b = bias.map_or(0.0, |b| b[ci]);
            match (relu, mask) {
                (_, Some(m)) => {
                    let m = &m[(img * c + ci) * p..][..p];
                    for ((d, v), m) in dst.iter_mut().zip(src).zip(m) {
                        *d = if *m > 0.0 { v + b } else { 0.0 };
                    }
                }
                (true, None) => dst.iter_mut().zip(src).for_each(|(d, v)| *d = (v + b).max(0.0)),
                (false, None) => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v + b),
            }
        }
    }
}

/// `x` ⊙ [mask > 0] into `out` (layout (imgs, c, p) kept), adding per-channel sums to `sums`.
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
pub fn gemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, dst: &mut [f32], accumulate: bool) {
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
    // SAFETY: the assert keeps every read inside `a` and `b` and every write inside `dst`
    // (m·n elements, row stride n).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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
            gemm::Parallelism::None,
        );
    }
}
