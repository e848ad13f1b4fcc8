//! Winograd F(2×2, 3×3) and F(4×4, 3×3) for 3×3 convolutions with stride 1 and padding 1,
//! and F(3×3, 4×4) for 4×4 ones (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016).
//!
//! [`Tile::F2`]: the output is cut into 2×2 tiles; tile t reads the 4×4 input patch d_t
//! around it. With
//!
//! ```text
//!       ⎡1  0 −1  0⎤        ⎡ 1    0    0 ⎤
//! Bᵀ =  ⎢0  1  1  0⎥   G =  ⎢1/2  1/2  1/2⎥   Aᵀ = ⎡1  1  1  0⎤
//!       ⎢0 −1  1  0⎥        ⎢1/2 −1/2  1/2⎥        ⎣0  1 −1 −1⎦
//!       ⎣0  1  0 −1⎦        ⎣ 0    0    1 ⎦
//! ```
//!
//! a tile of output channel o is Aᵀ [Σ_c (G g_oc Gᵀ) ⊙ (Bᵀ d_tc B)] A: each of the 16
//! positions ξ of the 4×4 transformed tile is one gemm M_ξ (o × T) = U_ξ (o × c) · V_ξ (c × T)
//! over the T tiles of a chunk of images, 16 multiplies per tile and channel pair where the
//! direct convolution needs 36. The backward pass runs the adjoints of the same maps:
//!
//! - dM = A dY Aᵀ per output tile (dY zero outside the image),
//! - dV_ξ = U_ξᵀ · dM_ξ, dd = B dV Bᵀ, added into the input patch each tile read,
//! - dU_ξ = Σ_t dM_ξ V_ξᵀ, dg = Gᵀ dU G.
//!
//! [`Tile::F4`] is the same with 4×4 output tiles, 6×6 input patches and the 36-point
//! transforms of Lavin & Gray's F(4×4, 3×3) (interpolation points 0, ±1, ±2, ∞):
//!
//! ```text
//!       ⎡4  0 −5  0  1  0⎤        ⎡ 1/4    0     0  ⎤
//!       ⎢0 −4 −4  1  1  0⎥        ⎢−1/6  −1/6  −1/6 ⎥        ⎡1  1  1  1  1  0⎤
//! Bᵀ =  ⎢0  4 −4 −1  1  0⎥   G =  ⎢−1/6   1/6  −1/6 ⎥   Aᵀ = ⎢0  1 −1  2 −2  0⎥
//!       ⎢0 −2 −1  2  1  0⎥        ⎢1/24  1/12   1/6 ⎥        ⎢0  1  1  4  4  0⎥
//!       ⎢0  2 −1 −2  1  0⎥        ⎢1/24 −1/12   1/6 ⎥        ⎣0  1 −1  8 −8  1⎦
//!       ⎣0  4  0 −5  0  1⎦        ⎣  0     0     1  ⎦
//! ```
//!
//! 36 multiplies per tile and channel pair where the direct convolution needs 144 (on a 7×7
//! map, whose 8×8 of whole tiles wastes 15 of 64 outputs with either tile: 0.31 of the direct
//! multiply-adds against F(2×2)'s 0.58). Its transforms have larger coefficients, so it rounds
//! worse: at most 4.4e-6 of the sum of the products' magnitudes in the tests below, against
//! F(2×2)'s 1.5e-7.
//!
//! [`Tile::F3K4`] is F(3×3, 4×4) for the discriminator's 4×4 convolutions with stride 1 and
//! padding 1 (output one smaller a side than the input): 3×3 output tiles, 6×6 patches, the
//! same six points and so the same Bᵀ as F(4×4, 3×3) (Bᵀ is the inverse transpose of the
//! points' Vandermonde matrix, scaled as Lavin & Gray scale it), with G the 4-tap evaluation
//! at the points under that scaling, and Aᵀ the 3-output one:
//!
//! ```text
//!       ⎡ 1/4    0     0     0  ⎤
//!       ⎢−1/6  −1/6  −1/6  −1/6 ⎥
//! G =   ⎢−1/6   1/6  −1/6   1/6 ⎥   Aᵀ = ⎡1  1  1  1  1  0⎤
//!       ⎢1/24  1/12   1/6   1/3 ⎥        ⎢0  1 −1  2 −2  0⎥
//!       ⎢1/24 −1/12   1/6  −1/3 ⎥        ⎣0  1  1  4  4  1⎦
//!       ⎣  0     0     0     1  ⎦
//! ```
//!
//! 36 multiplies per tile and channel pair where the direct convolution needs 144: on the
//! discriminator's 7×7 → 6×6 layer the 2×2 tiles cover the output exactly, 0.25 of the direct
//! multiply-adds. Rounding: at most 1.9e-6 of the products' magnitudes in the tests below.
//! F(4×4, 3×3) and F(3×3, 4×4) share their code: the transforms are written once over the
//! output side M and kernel side R.
//!
//! Layouts: U is `[ξ][o][c]`; V, dV are `[ξ][T][c]`; M, dM are `[ξ][T][o]` (channels last,
//! so that the transforms run on runs of channels), with the tile index t = (image · th +
//! tile row) · tw + tile column, and the 16 (or 36) planes [`plane_stride`] apart. Images are
//! (imgs, c, h, w) as everywhere.

use super::kernels::{resized, simd_dispatch};
use super::transpose::{self, Post, TO_PIXELS, TO_PLANES};

/// The tile of a Winograd convolution: F(2×2, 3×3), F(4×4, 3×3) or F(3×3, 4×4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
    /// F(3×3, 4×4), for 4×4 convolutions with stride 1 and padding 1.
    F3K4,
}

impl Tile {
    /// The side of an output tile.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
            Tile::F3K4 => 3,
        }
    }

    /// The side of the kernel.
    pub fn r(self) -> usize {
        match self {
            Tile::F2 | Tile::F4 => 3,
            Tile::F3K4 => 4,
        }
    }

    /// The side of an input patch and of a transformed tile: m + r − 1.
    pub fn alpha(self) -> usize {
        self.m() + self.r() - 1
    }

    /// The points ξ of a transformed tile: one gemm each.
    pub fn points(self) -> usize {
        self.alpha() * self.alpha()
    }

    /// The output sides of an h × w input (stride 1, padding 1).
    pub fn out_sides(self, h: usize, w: usize) -> (usize, usize) {
        out_sides(h, w, self.r())
    }
}

/// The output sides of an h × w input under an r × r kernel with stride 1 and padding 1.
fn out_sides(h: usize, w: usize, r: usize) -> (usize, usize) {
    ((h + 3).saturating_sub(r), (w + 3).saturating_sub(r))
}

/// Tiles per image: rows and columns of m×m output tiles covering an h × w output.
pub fn tiles(h: usize, w: usize, tile: Tile) -> (usize, usize) {
    (h.div_ceil(tile.m()), w.div_ceil(tile.m()))
}

/// The kernel (o, c, r, r) transformed: U_ξ = G g Gᵀ, laid out `[ξ][o][c]`.
pub fn weight_transform(w: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => weight_transform_f2(w, o, c),
        Tile::F4 | Tile::F3K4 => weight_transform_a6(w, o, c, tile),
    }
}

/// The kernel gradient (o, c, r, r) from dU (`[ξ][o][c]`): dg = Gᵀ dU G.
pub fn weight_grad(du: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => weight_grad_f2(du, o, c),
        Tile::F4 | Tile::F3K4 => weight_grad_a6(du, o, c, tile),
    }
}

/// V = Bᵀ d B for every tile of `imgs` images x (imgs, c, h, w), through relu when `relu`,
/// into `v` (`[ξ][T][c]`, T = imgs · th · tw, the tiles of the output). `scratch` is reused.
#[allow(clippy::too_many_arguments)]
pub fn input_transform(
    tile: Tile,
    x: &[f32],
    imgs: usize,
    c: usize,
    h: usize,
    w: usize,
    relu: bool,
    v: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    match tile {
        Tile::F2 => input_transform_f2(x, imgs, c, h, w, relu, v, scratch),
        Tile::F4 => input_transform_f4(x, imgs, c, h, w, relu, v, scratch),
        Tile::F3K4 => input_transform_f3k4(x, imgs, c, h, w, relu, v, scratch),
    }
}

/// y = relu?(Aᵀ M A + bias) for `imgs` images into `y` (imgs, o, h, w: the output's sides),
/// from M (`[ξ][T][o]`).
#[allow(clippy::too_many_arguments)]
pub fn output_transform(
    tile: Tile,
    m: &[f32],
    imgs: usize,
    o: usize,
    h: usize,
    w: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    match tile {
        Tile::F2 => output_transform_f2(m, imgs, o, h, w, bias, relu, y, scratch),
        Tile::F4 => output_transform_f4(m, imgs, o, h, w, bias, relu, y, scratch),
        Tile::F3K4 => output_transform_f3k4(m, imgs, o, h, w, bias, relu, y, scratch),
    }
}

/// dM = A dY Aᵀ for every tile of `imgs` images, dY = dy (imgs, o, h, w: the output's sides)
/// zeroed where `mask` (laid out like dy) is ≤ 0, into `dm` (`[ξ][T][o]`); adds each channel's
/// sum of dY to `sums`.
#[allow(clippy::too_many_arguments)]
pub fn grad_output_transform(
    tile: Tile,
    dy: &[f32],
    mask: Option<&[f32]>,
    imgs: usize,
    o: usize,
    h: usize,
    w: usize,
    dm: &mut [f32],
    sums: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    match tile {
        Tile::F2 => grad_output_transform_f2(dy, mask, imgs, o, h, w, dm, sums, scratch),
        Tile::F4 => grad_output_transform_f4(dy, mask, imgs, o, h, w, dm, sums, scratch),
        Tile::F3K4 => grad_output_transform_f3k4(dy, mask, imgs, o, h, w, dm, sums, scratch),
    }
}

/// The input gradient dx (imgs, c, h, w) from dV (`[ξ][T][c]`): B dV Bᵀ per tile, summed into
/// the input pixels the tile read, zeroed where `mask` (laid out like dx) is ≤ 0.
#[allow(clippy::too_many_arguments)]
pub fn grad_input_transform(
    tile: Tile,
    dv: &[f32],
    imgs: usize,
    c: usize,
    h: usize,
    w: usize,
    mask: Option<&[f32]>,
    dx: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    match tile {
        Tile::F2 => grad_input_transform_f2(dv, imgs, c, h, w, mask, dx, scratch),
        Tile::F4 => grad_input_transform_f4(dv, imgs, c, h, w, mask, dx, scratch),
        Tile::F3K4 => grad_input_transform_f3k4(dv, imgs, c, h, w, mask, dx, scratch),
    }
}

/// [`weight_transform`] for F(2×2, 3×3).
fn weight_transform_f2(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let plane = o * c;
    let mut u = vec![0.0f32; 16 * plane];
    for (oc, g) in w.chunks_exact(9).enumerate().take(plane) {
        // G g: 4 rows of 3.
        let mut gg = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            gg[0][j] = g0;
            gg[1][j] = 0.5 * (g0 + g1 + g2);
            gg[2][j] = 0.5 * (g0 - g1 + g2);
            gg[3][j] = g2;
        }
        // (G g) Gᵀ: each row of 3 to 4.
        for (i, r) in gg.iter().enumerate() {
            let row = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
            for (j, v) in row.into_iter().enumerate() {
                u[(i * 4 + j) * plane + oc] = v;
            }
        }
    }
    u
}

/// [`weight_grad`] for F(2×2, 3×3).
fn weight_grad_f2(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    let plane = o * c;
    let mut dw = vec![0.0f32; 9 * plane];
    for (oc, dg) in dw.chunks_exact_mut(9).enumerate() {
        let u = |i: usize, j: usize| du[(i * 4 + j) * plane + oc];
        // Gᵀ dU, column by column: cols[j][i] is row i of 3, column j of 4.
        let cols: [[f32; 3]; 4] = std::array::from_fn(|j| {
            let (u0, u1, u2, u3) = (u(0, j), u(1, j), u(2, j), u(3, j));
            [u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3]
        });
        // (Gᵀ dU) G: each row of 4 to 3.
        for (i, out) in dg.chunks_exact_mut(3).enumerate() {
            let r = [cols[0][i], cols[1][i], cols[2][i], cols[3][i]];
            out[0] = r[0] + 0.5 * (r[1] + r[2]);
            out[1] = 0.5 * (r[1] - r[2]);
            out[2] = 0.5 * (r[1] + r[2]) + r[3];
        }
    }
    dw
}

/// The distance between the 16 planes of V, M, dV or dM holding `len` floats each. An odd
/// multiple of 64 bytes modulo 4 KiB: the transforms read and write the 16 planes side by
/// side, and planes 4 KiB apart would all fall into the same L1 cache set.
pub fn plane_stride(len: usize) -> usize {
    len.next_multiple_of(1024) + 16
}

/// The tiling of `imgs` outputs of h × w with `ch` channels by m × m tiles: tile rows and
/// columns per image, tiles per image, and the planes' stride.
fn tiling(imgs: usize, ch: usize, h: usize, w: usize, m: usize) -> (usize, usize, usize, usize) {
    let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
    (th, tw, th * tw, plane_stride(imgs * th * tw * ch))
}

/// Floats of V and M (or dV and dM) for one h × w input image of c input and o output channels.
pub fn floats_per_image(c: usize, o: usize, h: usize, w: usize, tile: Tile) -> usize {
    let (ho, wo) = tile.out_sides(h, w);
    let (th, tw) = tiles(ho, wo, tile);
    tile.points() * th * tw * (c + o)
}

/// One image (c, h, w), through relu when `relu`, into a channels-last plane `pw` pixels wide
/// at row 1, column 1 (the rest of the plane is left as it is: the zero padding).
#[inline(always)]
fn pad_channels_last(img: &[f32], c: usize, h: usize, w: usize, pw: usize, relu: bool, plane: &mut [f32]) {
    let at = transpose::in_plane(w, pw, 1, c);
    transpose::pass::<TO_PIXELS>(img, c, h * w, Post { relu, ..Post::default() }, at, plane);
}

/// The interior of a channels-last plane `pw` pixels wide (from row 1, column 1) to one image
/// (c, h, w), zeroed where `mask` (laid out like the image) is ≤ 0.
#[inline(always)]
fn unpad_channels_last(acc: &[f32], c: usize, h: usize, w: usize, pw: usize, mask: Option<&[f32]>, dst: &mut [f32]) {
    let at = transpose::in_plane(w, pw, 1, c);
    transpose::pass::<TO_PLANES>(acc, c, h * w, Post { mask, ..Post::default() }, at, dst);
}

/// One image's dY (o, h, w), zeroed where `mask` (laid out like it) is ≤ 0, into a
/// channels-last plane `pw` pixels wide from its corner; each channel's sum added to `sums`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn masked_channels_last(
    dy: &[f32],
    mask: Option<&[f32]>,
    o: usize,
    h: usize,
    w: usize,
    pw: usize,
    full: &mut [f32],
    sums: &mut [f32],
) {
    for (oc, src) in dy.chunks_exact(h * w).enumerate() {
        // The channel's sum over its pixels in order, from 0.
        let mut acc = 0.0f32;
        match mask {
            Some(m) => {
                for (s, m) in src.iter().zip(&m[oc * h * w..][..h * w]) {
                    acc += if *m <= 0.0 { 0.0 } else { *s };
                }
            }
            None => src.iter().for_each(|s| acc += s),
        }
        sums[oc] += acc;
    }
    let at = transpose::in_plane(w, pw, 0, o);
    transpose::pass::<TO_PIXELS>(dy, o, h * w, Post { mask, ..Post::default() }, at, full);
}

/// A channels-last plane `pw` pixels wide, from its corner, to one image (o, h, w), plus the
/// bias and through relu when given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn from_channels_last(
    full: &[f32],
    o: usize,
    h: usize,
    w: usize,
    pw: usize,
    bias: Option<&[f32]>,
    relu: bool,
    dst: &mut [f32],
) {
    let at = transpose::in_plane(w, pw, 0, o);
    transpose::pass::<TO_PLANES>(full, o, h * w, Post { bias, relu, mask: None }, at, dst);
}

/// Channels per block of the transforms' vector loops.
const CB: usize = 64;

simd_dispatch! {
    /// V = Bᵀ d B for every tile of `imgs` images x (imgs, c, h, w), through relu when `relu`,
    /// into `v` (`[ξ][T][c]`, T = imgs · th · tw). Each image is first copied into a zero-padded
    /// channels-last plane, so that a tile's 16 inputs are 16 runs of c values and the
    /// transform runs on whole runs. `scratch` is reused.
    fn input_transform_f2(
        x: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        relu: bool,
        v: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w, 2);
        // One zero row/column before the image and enough after it for whole tiles.
        let (ph, pw) = (2 * th + 2, 2 * tw + 2);
        let plane = resized(scratch, ph * pw * c);
        plane.fill(0.0);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut s = [[0.0f32; CB]; 16];
        for img in 0..imgs {
            pad_channels_last(&x[img * c * h * w..][..c * h * w], c, h, w, pw, relu, plane);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        let d = |i: usize, j: usize| &plane[((2 * a + i) * pw + 2 * b + j) * c + cb..][..n];
                        // Bᵀ d: s[i·4 + j].
                        for j in 0..4 {
                            let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
                            for k in 0..n {
                                s[j][k] = d0[k] - d2[k];
                                s[4 + j][k] = d1[k] + d2[k];
                                s[8 + j][k] = d2[k] - d1[k];
                                s[12 + j][k] = d1[k] - d3[k];
                            }
                        }
                        // (Bᵀ d) B, row by row.
                        for i in 0..4 {
                            let (s0, s1, s2, s3) = (&s[4 * i], &s[4 * i + 1], &s[4 * i + 2], &s[4 * i + 3]);
                            let base = t * c + cb;
                            let (v0, rest) = v[4 * i * ps + base..].split_at_mut(ps);
                            let (v1, rest) = rest.split_at_mut(ps);
                            let (v2, v3) = rest.split_at_mut(ps);
                            for k in 0..n {
                                v0[k] = s0[k] - s2[k];
                                v1[k] = s1[k] + s2[k];
                                v2[k] = s2[k] - s1[k];
                                v3[k] = s1[k] - s3[k];
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// y = relu?(Aᵀ M A + bias) for `imgs` images into `y` (imgs, o, h, w), from M (`[ξ][T][o]`).
    /// `scratch` is reused.
    fn output_transform_f2(
        m: &[f32],
        imgs: usize,
        o: usize,
        h: usize,
        w: usize,
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, 2);
        // One image's output, channels last, on whole tiles.
        let (ph, pw) = (2 * th, 2 * tw);
        let full = resized(scratch, ph * pw * o);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut u = [[0.0f32; CB]; 8];
        for img in 0..imgs {
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..o).step_by(CB) {
                        let n = CB.min(o - cb);
                        let mv = |i: usize, j: usize| &m[(4 * i + j) * ps + t * o + cb..][..n];
                        // Aᵀ M: u[r·4 + j].
                        for j in 0..4 {
                            let (m0, m1, m2, m3) = (mv(0, j), mv(1, j), mv(2, j), mv(3, j));
                            for k in 0..n {
                                u[j][k] = m0[k] + m1[k] + m2[k];
                                u[4 + j][k] = m1[k] - m2[k] - m3[k];
                            }
                        }
                        for r in 0..2 {
                            let (u0, u1, u2, u3) = (&u[4 * r], &u[4 * r + 1], &u[4 * r + 2], &u[4 * r + 3]);
                            let at = ((2 * a + r) * pw + 2 * b) * o + cb;
                            let (p0, p1) = full[at..].split_at_mut(o);
                            for k in 0..n {
                                let bias = bias.map_or(0.0, |bb| bb[cb + k]);
                                let (p, q) = (u0[k] + u1[k] + u2[k] + bias, u1[k] - u2[k] - u3[k] + bias);
                                p0[k] = if relu { p.max(0.0) } else { p };
                                p1[k] = if relu { q.max(0.0) } else { q };
                            }
                        }
                    }
                }
            }
            // Channels last to (o, h, w).
            from_channels_last(full, o, h, w, pw, None, false, &mut y[img * o * h * w..][..o * h * w]);
        }
    }
}

simd_dispatch! {
    /// dM = A dY Aᵀ for every tile of `imgs` images, dY = dy (imgs, o, h, w) zeroed where
    /// `mask` (laid out like dy) is ≤ 0, into `dm` (`[ξ][T][o]`); adds each channel's sum of dY
    /// to `sums`. `scratch` is reused.
    fn grad_output_transform_f2(
        dy: &[f32],
        mask: Option<&[f32]>,
        imgs: usize,
        o: usize,
        h: usize,
        w: usize,
        dm: &mut [f32],
        sums: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, 2);
        // One image's dY, channels last, on whole tiles (zeros past the image).
        let (ph, pw) = (2 * th, 2 * tw);
        let full = resized(scratch, ph * pw * o);
        full.fill(0.0);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut z = [[0.0f32; CB]; 8];
        for img in 0..imgs {
            let base = img * o * h * w;
            let mask = mask.map(|m| &m[base..][..o * h * w]);
            masked_channels_last(&dy[base..][..o * h * w], mask, o, h, w, pw, full, sums);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..o).step_by(CB) {
                        let n = CB.min(o - cb);
                        let g = |r: usize, q: usize| &full[((2 * a + r) * pw + 2 * b + q) * o + cb..][..n];
                        // dY Aᵀ: z[r·4 + j].
                        for r in 0..2 {
                            let (p, q) = (g(r, 0), g(r, 1));
                            for k in 0..n {
                                z[4 * r][k] = p[k];
                                z[4 * r + 1][k] = p[k] + q[k];
                                z[4 * r + 2][k] = p[k] - q[k];
                                z[4 * r + 3][k] = -q[k];
                            }
                        }
                        // A (dY Aᵀ), column by column.
                        for j in 0..4 {
                            let (z0, z1) = (&z[j], &z[4 + j]);
                            let at = j * ps + t * o + cb;
                            let (d0, rest) = dm[at..].split_at_mut(4 * ps);
                            let (d1, rest) = rest.split_at_mut(4 * ps);
                            let (d2, d3) = rest.split_at_mut(4 * ps);
                            for k in 0..n {
                                d0[k] = z0[k];
                                d1[k] = z0[k] + z1[k];
                                d2[k] = z0[k] - z1[k];
                                d3[k] = -z1[k];
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// The input gradient dx (imgs, c, h, w) from dV (`[ξ][T][c]`): B dV Bᵀ per tile, summed into
    /// the input pixels the tile read, zeroed where `mask` (laid out like dx) is ≤ 0.
    /// `scratch` is reused.
    fn grad_input_transform_f2(
        dv: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        mask: Option<&[f32]>,
        dx: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w, 2);
        // The padded input plane, channels last, as an accumulator.
        let (ph, pw) = (2 * th + 2, 2 * tw + 2);
        let acc = resized(scratch, ph * pw * c);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut r = [[0.0f32; CB]; 16];
        for img in 0..imgs {
            acc.fill(0.0);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        let vv = |i: usize, j: usize| &dv[(4 * i + j) * ps + t * c + cb..][..n];
                        // dV Bᵀ: r[i·4 + j].
                        for i in 0..4 {
                            let (v0, v1, v2, v3) = (vv(i, 0), vv(i, 1), vv(i, 2), vv(i, 3));
                            for k in 0..n {
                                r[4 * i][k] = v0[k];
                                r[4 * i + 1][k] = v1[k] - v2[k] + v3[k];
                                r[4 * i + 2][k] = -v0[k] + v1[k] + v2[k];
                                r[4 * i + 3][k] = -v3[k];
                            }
                        }
                        // B (dV Bᵀ), added into the patch column by column.
                        for j in 0..4 {
                            let (r0, r1, r2, r3) = (&r[j], &r[4 + j], &r[8 + j], &r[12 + j]);
                            let row = |i: usize| ((2 * a + i) * pw + 2 * b + j) * c + cb;
                            for k in 0..n {
                                acc[row(0) + k] += r0[k];
                            }
                            for k in 0..n {
                                acc[row(1) + k] += r1[k] - r2[k] + r3[k];
                            }
                            for k in 0..n {
                                acc[row(2) + k] += -r0[k] + r1[k] + r2[k];
                            }
                            for k in 0..n {
                                acc[row(3) + k] -= r3[k];
                            }
                        }
                    }
                }
            }
            // The interior, channels last, to (c, h, w).
            let base = img * c * h * w;
            let mask = mask.map(|m| &m[base..][..c * h * w]);
            unpad_channels_last(acc, c, h, w, pw, mask, &mut dx[base..][..c * h * w]);
        }
    }
}

/// G g for F(4×4, 3×3): a line of 3 kernel taps to 6.
#[inline(always)]
fn g4(g: [f32; 3]) -> [f32; 6] {
    let [g0, g1, g2] = g;
    let (p, q) = (g0 + g2, g0 + 4.0 * g2);
    const SIXTH: f32 = 1.0 / 6.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    [
        0.25 * g0,
        -SIXTH * (p + g1),
        -SIXTH * (p - g1),
        TWENTY_FOURTH * (q + 2.0 * g1),
        TWENTY_FOURTH * (q - 2.0 * g1),
        g2,
    ]
}

/// Gᵀ u for F(4×4, 3×3), the adjoint of [`g4`]: 6 to 3.
#[inline(always)]
fn gt4(u: [f32; 6]) -> [f32; 3] {
    let [u0, u1, u2, u3, u4, u5] = u;
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    let (p12, p34) = (u1 + u2, u3 + u4);
    [0.25 * u0 - SIXTH * p12 + TWENTY_FOURTH * p34, SIXTH * (u2 - u1) + TWELFTH * (u3 - u4), SIXTH * (p34 - p12) + u5]
}

/// G g for F(3×3, 4×4): a line of 4 kernel taps to 6 (Lavin & Gray's scaling of the points
/// 0, ±1, ±2, ∞, as in [`g4`]).
#[inline(always)]
fn g34(g: [f32; 4]) -> [f32; 6] {
    let [g0, g1, g2, g3] = g;
    let (p, q) = (g0 + g2, g1 + g3);
    let (p4, q4) = (g0 + 4.0 * g2, 2.0 * g1 + 8.0 * g3);
    const SIXTH: f32 = 1.0 / 6.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    [0.25 * g0, -SIXTH * (p + q), -SIXTH * (p - q), TWENTY_FOURTH * (p4 + q4), TWENTY_FOURTH * (p4 - q4), g3]
}

/// Gᵀ u for F(3×3, 4×4), the adjoint of [`g34`]: 6 to 4.
#[inline(always)]
fn gt34(u: [f32; 6]) -> [f32; 4] {
    let [u0, u1, u2, u3, u4, u5] = u;
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const THIRD: f32 = 1.0 / 3.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    let (p12, m12, p34, m34) = (u1 + u2, u2 - u1, u3 + u4, u3 - u4);
    [
        0.25 * u0 - SIXTH * p12 + TWENTY_FOURTH * p34,
        SIXTH * m12 + TWELFTH * m34,
        SIXTH * (p34 - p12),
        SIXTH * m12 + THIRD * m34 + u5,
    ]
}

/// Aᵀ m for F(3×3, 4×4): a line of 6 to the 3 outputs.
#[inline(always)]
fn at34(m: [f32; 6]) -> [f32; 3] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (p12, m12, p34, m34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + p12 + p34, m12 + 2.0 * m34, p12 + 4.0 * p34 + m5]
}

/// A y, the adjoint of [`at34`]: 3 to 6.
#[inline(always)]
fn a34(y: [f32; 3]) -> [f32; 6] {
    let [y0, y1, y2] = y;
    let (p, q) = (y0 + y2, y0 + 4.0 * y2);
    [y0, p + y1, p - y1, q + 2.0 * y1, q - 2.0 * y1, y2]
}

/// [`weight_transform`] for the 36-point tiles.
fn weight_transform_a6(w: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    let mut u = vec![0.0f32; 36 * o * c];
    match tile {
        Tile::F3K4 => weight_transform_f3k4_into(w, o * c, &mut u),
        _ => weight_transform_f4_into(w, o * c, &mut u),
    }
    u
}

simd_dispatch! {
    /// U = G g Gᵀ of F(4×4, 3×3) for the `plane` = o · c kernels of w.
    fn weight_transform_f4_into(w: &[f32], plane: usize, u: &mut [f32]) {
        weight_transform_lines(g4, w, plane, u)
    }
}

simd_dispatch! {
    /// U = G g Gᵀ of F(3×3, 4×4) for the `plane` = o · c kernels of w.
    fn weight_transform_f3k4_into(w: &[f32], plane: usize, u: &mut [f32]) {
        weight_transform_lines(g34, w, plane, u)
    }
}

/// U = G g Gᵀ for the `plane` = o · c kernels of w (R × R taps each), with G's lines `gf`,
/// blocks of CB kernels at a time (the taps gathered into runs, so that the transform runs on
/// whole runs).
#[inline(always)]
fn weight_transform_lines<const R: usize>(gf: impl Fn([f32; R]) -> [f32; 6], w: &[f32], plane: usize, u: &mut [f32]) {
    let taps = R * R;
    for b0 in (0..plane).step_by(CB) {
        let n = CB.min(plane - b0);
        let mut g = [[0.0f32; CB]; 16];
        for (q, kernel) in w[b0 * taps..][..n * taps].chunks_exact(taps).enumerate() {
            for (k, t) in kernel.iter().enumerate() {
                g[k][q] = *t;
            }
        }
        // G g, column j into s[6j..6j + 6].
        let mut s = [[0.0f32; CB]; 24];
        for j in 0..R {
            lines(&gf, std::array::from_fn(|i| &g[R * i + j][..]), rows(&mut s, 6 * j), n, false);
        }
        // (G g) Gᵀ, row i into the planes 6i..6i + 6.
        for i in 0..6 {
            lines(&gf, std::array::from_fn(|j| &s[6 * j + i][..]), runs(u, 6 * i * plane + b0, plane), n, false);
        }
    }
}

/// [`weight_grad`] for the 36-point tiles.
fn weight_grad_a6(du: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    let r = tile.r();
    let mut dw = vec![0.0f32; r * r * o * c];
    match tile {
        Tile::F3K4 => weight_grad_f3k4_into(du, o * c, &mut dw),
        _ => weight_grad_f4_into(du, o * c, &mut dw),
    }
    dw
}

simd_dispatch! {
    /// dg = Gᵀ dU G of F(4×4, 3×3) for the `plane` = o · c kernels.
    fn weight_grad_f4_into(du: &[f32], plane: usize, dw: &mut [f32]) {
        weight_grad_lines(gt4, du, plane, dw)
    }
}

simd_dispatch! {
    /// dg = Gᵀ dU G of F(3×3, 4×4) for the `plane` = o · c kernels.
    fn weight_grad_f3k4_into(du: &[f32], plane: usize, dw: &mut [f32]) {
        weight_grad_lines(gt34, du, plane, dw)
    }
}

/// dg = Gᵀ dU G for the `plane` = o · c kernels (R × R taps each), with Gᵀ's lines `gtf`,
/// blocks of CB kernels at a time.
#[inline(always)]
fn weight_grad_lines<const R: usize>(gtf: impl Fn([f32; 6]) -> [f32; R], du: &[f32], plane: usize, dw: &mut [f32]) {
    let taps = R * R;
    for b0 in (0..plane).step_by(CB) {
        let n = CB.min(plane - b0);
        // Gᵀ dU, column j into r[Rj..Rj + R].
        let mut r = [[0.0f32; CB]; 24];
        for j in 0..6 {
            lines(&gtf, std::array::from_fn(|i| &du[(6 * i + j) * plane + b0..]), rows(&mut r, R * j), n, false);
        }
        // (Gᵀ dU) G, row a into taps Ra..Ra + R.
        let mut g = [[0.0f32; CB]; 16];
        for a in 0..R {
            let row: [&[f32]; 6] = std::array::from_fn(|j| &r[R * j + a][..]);
            lines(&gtf, row, rows(&mut g, R * a), n, false);
        }
        for (q, kernel) in dw[b0 * taps..][..n * taps].chunks_exact_mut(taps).enumerate() {
            for (k, t) in kernel.iter_mut().enumerate() {
                *t = g[k][q];
            }
        }
    }
}

/// Bᵀ d for F(4×4, 3×3): a line of 6 inputs to 6.
#[inline(always)]
fn bt4(d: [f32; 6]) -> [f32; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    [
        4.0 * d0 - 5.0 * d2 + d4,
        d3 + d4 - 4.0 * (d1 + d2),
        d4 - d3 + 4.0 * (d1 - d2),
        d4 - d2 - 2.0 * (d1 - d3),
        d4 - d2 + 2.0 * (d1 - d3),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// B r, the adjoint of [`bt4`].
#[inline(always)]
fn b4(r: [f32; 6]) -> [f32; 6] {
    let [r0, r1, r2, r3, r4, r5] = r;
    [
        4.0 * r0,
        4.0 * (r2 - r1 + r5) + 2.0 * (r4 - r3),
        -5.0 * r0 - 4.0 * (r1 + r2) - (r3 + r4),
        r1 - r2 + 2.0 * (r3 - r4) - 5.0 * r5,
        r0 + r1 + r2 + r3 + r4,
        r5,
    ]
}

/// Aᵀ m for F(4×4, 3×3): a line of 6 to the 4 outputs.
#[inline(always)]
fn at4(m: [f32; 6]) -> [f32; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (p12, m12, p34, m34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + p12 + p34, m12 + 2.0 * m34, p12 + 4.0 * p34, m12 + 8.0 * m34 + m5]
}

/// A y, the adjoint of [`at4`]: 4 to 6.
#[inline(always)]
fn a4(y: [f32; 4]) -> [f32; 6] {
    let [y0, y1, y2, y3] = y;
    let (p02, p13) = (y0 + y2, y1 + y3);
    let (q02, q13) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
    [y0, p02 + p13, p02 - p13, q02 + q13, q02 - q13, y3]
}

/// Channels a step of [`lines`] takes: two AVX2 vectors.
const LANES: usize = 16;

/// outs[o][k] = f(ins[·][k])[o] (or += when `add`) for k < n: one line transform applied to
/// runs of n channels.
///
/// Written as one loop over k, the compiler vectorises it only behind run-time checks that
/// the 6 to 12 runs do not overlap (it cannot see that the `&mut` runs in an array are
/// disjoint from the others), and runs the scalar loop for the tail after its unrolled
/// vector body: 22–37% of the four F(4×4) transforms' samples were scalar instructions
/// (perf, Intel Xeon; 1–26% after). Here the channels go LANES at a time through local
/// arrays (all inputs read before any output is written, so there is nothing to check) whose
/// fixed-length loops compile to whole vectors, and the scalar loop takes only what is left
/// of n. Each value is the same IEEE operations as before, in the same order: the same bits.
#[inline(always)]
fn lines<const I: usize, const O: usize>(
    f: impl Fn([f32; I]) -> [f32; O],
    ins: [&[f32]; I],
    outs: [&mut [f32]; O],
    n: usize,
    add: bool,
) {
    let ins = ins.map(|s| &s[..n]);
    let mut outs = outs.map(|s| &mut s[..n]);
    let whole = n - n % LANES;
    for k0 in (0..whole).step_by(LANES) {
        let x: [[f32; LANES]; I] = std::array::from_fn(|i| {
            let mut v = [0.0f32; LANES];
            v.copy_from_slice(&ins[i][k0..k0 + LANES]);
            v
        });
        let mut y = [[0.0f32; LANES]; O];
        for l in 0..LANES {
            let r = f(std::array::from_fn(|i| x[i][l]));
            for (y, r) in y.iter_mut().zip(r) {
                y[l] = r;
            }
        }
        for (out, y) in outs.iter_mut().zip(&y) {
            let out = &mut out[k0..k0 + LANES];
            if add {
                for (o, y) in out.iter_mut().zip(y) {
                    *o += y;
                }
            } else {
                out.copy_from_slice(y);
            }
        }
    }
    for k in whole..n {
        let r = f(std::array::from_fn(|i| ins[i][k]));
        for (out, r) in outs.iter_mut().zip(r) {
            if add {
                out[k] += r
            } else {
                out[k] = r
            }
        }
    }
}

/// N mutable runs of `s`, the first at `first` and each `stride` after the one before.
#[inline(always)]
fn runs<const N: usize>(s: &mut [f32], first: usize, stride: usize) -> [&mut [f32]; N] {
    let mut it = s[first..].chunks_mut(stride);
    // Cannot fail: the callers' planes and padded images hold all N runs of a tile (the
    // tiling sizes them), so the iterator has N chunks.
    std::array::from_fn(|_| it.next().expect("runs inside the buffer"))
}

/// N rows of `CB` floats of a stack scratch from `first` on, as mutable runs.
#[inline(always)]
fn rows<const N: usize>(s: &mut [[f32; CB]], first: usize) -> [&mut [f32]; N] {
    // Cannot fail: the slice has exactly N rows (an out-of-range `first` panics in the index
    // before, and the callers' scratch arrays are sized for their blocks).
    let block: &mut [[f32; CB]; N] = (&mut s[first..first + N]).try_into().expect("N rows");
    block.each_mut().map(|r| &mut r[..])
}

/// A 36-point transform body, written once over the tile's output side M and kernel side R
/// (M + R − 1 = 6), and its two instances: `$f4` for F(4×4, 3×3) and `$f3k4` for F(3×3, 4×4),
/// each compiled for AVX2 + FMA where the CPU has them.
macro_rules! a6_transform {
    ($(#[$m:meta])* fn $body:ident($($arg:ident: $ty:ty),* $(,)?) $block:block => $f4:ident, $f3k4:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        fn $body<const M: usize, const R: usize>($($arg: $ty),*) $block
        simd_dispatch! {
            fn $f4($($arg: $ty),*) {
                $body::<4, 3>($($arg),*)
            }
        }
        simd_dispatch! {
            fn $f3k4($($arg: $ty),*) {
                $body::<3, 4>($($arg),*)
            }
        }
    };
}

a6_transform! {
    /// [`input_transform`] for the tile with M × M outputs and R × R kernel taps (M + R − 1 = 6).
    fn input_transform_body(
        x: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        relu: bool,
        v: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (ho, wo) = out_sides(h, w, R);
        let (th, tw, tpi, ps) = tiling(imgs, c, ho, wo, M);
        // One zero row/column before the image and enough after it for whole tiles.
        let (ph, pw) = (M * th + R - 1, M * tw + R - 1);
        let plane = resized(scratch, ph * pw * c);
        plane.fill(0.0);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut s = [[0.0f32; CB]; 36];
        for img in 0..imgs {
            pad_channels_last(&x[img * c * h * w..][..c * h * w], c, h, w, pw, relu, plane);
            let plane = &*plane;
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        let d = |i: usize, j: usize| &plane[((M * a + i) * pw + M * b + j) * c + cb..];
                        // Bᵀ d, column j into s[6j..6j + 6].
                        for j in 0..6 {
                            lines(bt4, std::array::from_fn(|i| d(i, j)), rows(&mut s, 6 * j), n, false);
                        }
                        // (Bᵀ d) B, row i into the planes 6i..6i + 6.
                        for i in 0..6 {
                            let row: [&[f32]; 6] = std::array::from_fn(|j| &s[6 * j + i][..]);
                            lines(bt4, row, runs(v, 6 * i * ps + t * c + cb, ps), n, false);
                        }
                    }
                }
            }
        }
    } => input_transform_f4, input_transform_f3k4
}

/// Aᵀ m of the tile with M outputs a side.
#[inline(always)]
fn at_lines<const M: usize>(m: [f32; 6]) -> [f32; M] {
    let (v4, v3) = (at4(m), at34(m));
    std::array::from_fn(|i| if M == 4 { v4[i] } else { v3[i] })
}

/// A y of the tile with M outputs a side.
#[inline(always)]
fn a_lines<const M: usize>(y: [f32; M]) -> [f32; 6] {
    if M == 4 {
        a4(std::array::from_fn(|i| y[i]))
    } else {
        a34(std::array::from_fn(|i| y[i]))
    }
}

a6_transform! {
    /// [`output_transform`] for the tile with M × M outputs (h × w are the output's sides).
    fn output_transform_body(
        m: &[f32],
        imgs: usize,
        o: usize,
        h: usize,
        w: usize,
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, M);
        // One image's output, channels last, on whole tiles.
        let pw = M * tw;
        let full = resized(scratch, M * th * pw * o);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut u = [[0.0f32; CB]; 24];
        for img in 0..imgs {
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..o).step_by(CB) {
                        let n = CB.min(o - cb);
                        let mv = |i: usize, j: usize| &m[(6 * i + j) * ps + t * o + cb..];
                        // Aᵀ M, column j into u[Mj..Mj + M].
                        for j in 0..6 {
                            lines(at_lines::<M>, std::array::from_fn(|i| mv(i, j)), rows(&mut u, M * j), n, false);
                        }
                        // (Aᵀ M) A, row r into the tile's output row r.
                        for r in 0..M {
                            let row: [&[f32]; 6] = std::array::from_fn(|j| &u[M * j + r][..]);
                            lines(at_lines::<M>, row, runs(full, ((M * a + r) * pw + M * b) * o + cb, o), n, false);
                        }
                    }
                }
            }
            // Channels last to (o, h, w), with the bias and the relu.
            from_channels_last(full, o, h, w, pw, bias, relu, &mut y[img * o * h * w..][..o * h * w]);
        }
    } => output_transform_f4, output_transform_f3k4
}

a6_transform! {
    /// [`grad_output_transform`] for the tile with M × M outputs (h × w are the output's sides).
    fn grad_output_transform_body(
        dy: &[f32],
        mask: Option<&[f32]>,
        imgs: usize,
        o: usize,
        h: usize,
        w: usize,
        dm: &mut [f32],
        sums: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, M);
        // One image's dY, channels last, on whole tiles (zeros past the image).
        let pw = M * tw;
        let full = resized(scratch, M * th * pw * o);
        full.fill(0.0);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut z = [[0.0f32; CB]; 24];
        for img in 0..imgs {
            let base = img * o * h * w;
            let mask = mask.map(|m| &m[base..][..o * h * w]);
            masked_channels_last(&dy[base..][..o * h * w], mask, o, h, w, pw, full, sums);
            let full = &*full;
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..o).step_by(CB) {
                        let n = CB.min(o - cb);
                        let g = |r: usize, q: usize| &full[((M * a + r) * pw + M * b + q) * o + cb..];
                        // dY Aᵀ, row r into z[6r..6r + 6].
                        for r in 0..M {
                            lines(a_lines::<M>, std::array::from_fn(|q| g(r, q)), rows(&mut z, 6 * r), n, false);
                        }
                        // A (dY Aᵀ), column j into the planes j, 6 + j, …, 30 + j.
                        for j in 0..6 {
                            let col: [&[f32]; M] = std::array::from_fn(|r| &z[6 * r + j][..]);
                            lines(a_lines::<M>, col, runs(dm, j * ps + t * o + cb, 6 * ps), n, false);
                        }
                    }
                }
            }
        }
    } => grad_output_transform_f4, grad_output_transform_f3k4
}

a6_transform! {
    /// [`grad_input_transform`] for the tile with M × M outputs and R × R kernel taps.
    fn grad_input_transform_body(
        dv: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        mask: Option<&[f32]>,
        dx: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (ho, wo) = out_sides(h, w, R);
        let (th, tw, tpi, ps) = tiling(imgs, c, ho, wo, M);
        // The padded input plane, channels last, as an accumulator.
        let (ph, pw) = (M * th + R - 1, M * tw + R - 1);
        let acc = resized(scratch, ph * pw * c);
        // Zeroed once per call, not per block: every block writes the rows it reads first.
        let mut r = [[0.0f32; CB]; 36];
        for img in 0..imgs {
            acc.fill(0.0);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        // dV Bᵀ, row i into r[6i..6i + 6].
                        for i in 0..6 {
                            let row: [&[f32]; 6] = std::array::from_fn(|j| &dv[(6 * i + j) * ps + t * c + cb..]);
                            lines(b4, row, rows(&mut r, 6 * i), n, false);
                        }
                        // B (dV Bᵀ), column l added into the patch's column l.
                        for l in 0..6 {
                            let col: [&[f32]; 6] = std::array::from_fn(|i| &r[6 * i + l][..]);
                            lines(b4, col, runs(acc, ((M * a) * pw + M * b + l) * c + cb, pw * c), n, true);
                        }
                    }
                }
            }
            // The interior, channels last, to (c, h, w).
            let base = img * c * h * w;
            let mask = mask.map(|m| &m[base..][..c * h * w]);
            unpad_channels_last(acc, c, h, w, pw, mask, &mut dx[base..][..c * h * w]);
        }
    } => grad_input_transform_f4, grad_input_transform_f3k4
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A direct r×r, stride 1, pad 1 convolution in f64, the oracle (output (h + 3 − r) ×
    /// (w + 3 − r)). Also the sum of the products' magnitudes of each output, the scale its
    /// rounding errors are relative to.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        wt: &[f32],
        n: usize,
        c: usize,
        o: usize,
        h: usize,
        w: usize,
        r: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (ho, wo) = (h + 3 - r, w + 3 - r);
        let mut y = vec![0.0f64; n * o * ho * wo];
        let mut scale = vec![0.0f64; n * o * ho * wo];
        for img in 0..n {
            for oc in 0..o {
                for yy in 0..ho {
                    for xx in 0..wo {
                        let (mut s, mut a) = (0.0f64, 0.0f64);
                        for ci in 0..c {
                            for i in 0..r {
                                for j in 0..r {
                                    let (sy, sx) = (yy as isize + i as isize - 1, xx as isize + j as isize - 1);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let p = x[((img * c + ci) * h + sy as usize) * w + sx as usize] as f64
                                        * wt[((oc * c + ci) * r + i) * r + j] as f64;
                                    s += p;
                                    a += p.abs();
                                }
                            }
                        }
                        y[((img * o + oc) * ho + yy) * wo + xx] = s;
                        scale[((img * o + oc) * ho + yy) * wo + xx] = a;
                    }
                }
            }
        }
        (y, scale)
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Forward through the transforms and a naive product in the Winograd domain.
    #[allow(clippy::too_many_arguments)]
    fn forward(x: &[f32], wt: &[f32], n: usize, c: usize, o: usize, h: usize, w: usize, tile: Tile) -> Vec<f32> {
        let (ho, wo) = tile.out_sides(h, w);
        let (th, tw) = tiles(ho, wo, tile);
        let t_all = n * th * tw;
        let (sv, sm) = (plane_stride(c * t_all), plane_stride(o * t_all));
        let pts = tile.points();
        let mut v = vec![0.0f32; pts * sv];
        input_transform(tile, x, n, c, h, w, false, &mut v, &mut Vec::new());
        let u = weight_transform(wt, o, c, tile);
        let mut m = vec![0.0f32; pts * sm];
        for xi in 0..pts {
            for oc in 0..o {
                for t in 0..t_all {
                    m[xi * sm + t * o + oc] =
                        (0..c).map(|ci| u[(xi * o + oc) * c + ci] * v[xi * sv + t * c + ci]).sum();
                }
            }
        }
        let mut y = vec![0.0f32; n * o * ho * wo];
        output_transform(tile, &m, n, o, ho, wo, None, false, &mut y, &mut Vec::new());
        y
    }

    #[test]
    fn the_transforms_compute_a_direct_convolution() {
        // Odd and even sides (a partial last tile), one and several images and channels.
        // All three tiles; sides that are and are not whole numbers of tiles (the 4×4 kernel's
        // output is one smaller a side than its input). Errors relative to the sum of the
        // products' magnitudes, the scale of any summation order's rounding.
        let mut seed = 7u64;
        for tile in [Tile::F2, Tile::F4, Tile::F3K4] {
            for (n, c, o, h, w) in
                [(1, 1, 1, 2, 2), (2, 3, 2, 7, 7), (1, 2, 3, 4, 5), (3, 4, 2, 8, 3), (1, 3, 2, 9, 12), (1, 70, 3, 6, 7)]
            {
                let x: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
                let wt: Vec<f32> = (0..o * c * tile.r() * tile.r()).map(|_| lcg(&mut seed)).collect();
                let y = forward(&x, &wt, n, c, o, h, w, tile);
                let (r, scale) = direct(&x, &wt, n, c, o, h, w, tile.r());
                assert_eq!(y.len(), r.len());
                let worst = y
                    .iter()
                    .zip(&r)
                    .zip(&scale)
                    .map(|((a, b), s)| (*a as f64 - b).abs() / s.max(1e-30))
                    .fold(0.0, f64::max);
                // Measured (VQLAB_PRINT_ROUNDING=1 prints them): F2 ≤ 1.5e-7, F4 ≤ 4.4e-6,
                // F3K4 ≤ 1.9e-6 (the 36-point transforms' larger coefficients round worse).
                let bound = if tile == Tile::F2 { 1e-6 } else { 1e-5 };
                assert!(worst < bound, "{worst:e} for {:?}", (tile, n, c, o, h, w));
                if std::env::var_os("VQLAB_PRINT_ROUNDING").is_some() {
                    eprintln!("{tile:?} {:?}: {worst:e}", (n, c, o, h, w));
                }
            }
        }
    }

    #[test]
    fn the_adjoint_transforms_are_adjoints() {
        // ⟨T x, y⟩ = ⟨x, Tᵀ y⟩ for the input transform and its adjoint, the output transform
        // and its adjoint, and the weight transform and the weight gradient, for both tiles
        // and a channel count past one block of the transforms' loops.
        // Both sides in f64 with the sum of the products' magnitudes as the scale: the
        // transforms' outputs carry f32 rounding relative to it.
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .fold((0.0f64, 0.0f64), |(s, m), (p, q)| (s + *p as f64 * *q as f64, m + (*p as f64 * *q as f64).abs()))
        };
        let close = |(a, ma): (f64, f64), (b, mb): (f64, f64)| (a - b).abs() <= 1e-6 * ma.max(mb);
        let mut seed = 11u64;
        for tile in [Tile::F2, Tile::F4, Tile::F3K4] {
            for (n, c, h, w) in [(2usize, 3usize, 5usize, 6usize), (1, 70, 7, 7)] {
                let pts = tile.points();
                let (ho, wo) = tile.out_sides(h, w);
                let (th, tw) = tiles(ho, wo, tile);
                let t_all = n * th * tw;
                let sp = plane_stride(c * t_all);
                let x: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
                let dv: Vec<f32> = (0..pts * sp).map(|_| lcg(&mut seed)).collect();
                let mut v = vec![0.0f32; pts * sp];
                input_transform(tile, &x, n, c, h, w, false, &mut v, &mut Vec::new());
                let mut dx = vec![0.0f32; x.len()];
                grad_input_transform(tile, &dv, n, c, h, w, None, &mut dx, &mut Vec::new());
                assert!(close(dot(&v, &dv), dot(&x, &dx)), "{tile:?} {c}: {:?} {:?}", dot(&v, &dv), dot(&x, &dx));

                // Only the planes' first c · T floats are read and written; the gaps stay zero.
                let m: Vec<f32> =
                    (0..pts * sp).map(|i| if i % sp < c * t_all { lcg(&mut seed) } else { 0.0 }).collect();
                let dy: Vec<f32> = (0..n * c * ho * wo).map(|_| lcg(&mut seed)).collect();
                let mut y = vec![0.0f32; dy.len()];
                output_transform(tile, &m, n, c, ho, wo, None, false, &mut y, &mut Vec::new());
                let mut dm = vec![0.0f32; m.len()];
                let mut sums = vec![0.0f32; c];
                grad_output_transform(tile, &dy, None, n, c, ho, wo, &mut dm, &mut sums, &mut Vec::new());
                assert!(close(dot(&y, &dy), dot(&m, &dm)), "{tile:?} {c}: {:?} {:?}", dot(&y, &dy), dot(&m, &dm));
                for (ci, s) in sums.iter().enumerate() {
                    let want: f32 = (0..n).map(|i| dy[(i * c + ci) * ho * wo..][..ho * wo].iter().sum::<f32>()).sum();
                    assert!((s - want).abs() < 1e-4);
                }

                let g: Vec<f32> = (0..2 * c * tile.r() * tile.r()).map(|_| lcg(&mut seed)).collect();
                let du: Vec<f32> = (0..pts * 2 * c).map(|_| lcg(&mut seed)).collect();
                let u = weight_transform(&g, 2, c, tile);
                let dg = weight_grad(&du, 2, c, tile);
                assert!(close(dot(&u, &du), dot(&g, &dg)), "{tile:?} {c}: {:?} {:?}", dot(&u, &du), dot(&g, &dg));
            }
        }
    }
}
