//! Winograd F(2×2, 3×3) and F(4×4, 3×3) for 3×3 convolutions with stride 1 and padding 1
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
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
//! worse: at most 3.4e-6 of the sum of the products' magnitudes in the tests below, against
//! F(2×2)'s 1.5e-7.
//!
//! Layouts: U is `[ξ][o][c]`; V, dV are `[ξ][T][c]`; M, dM are `[ξ][T][o]` (channels last,
//! so that the transforms run on runs of channels), with the tile index t = (image · th +
//! tile row) · tw + tile column, and the 16 (or 36) planes [`plane_stride`] apart. Images are
//! (imgs, c, h, w) as everywhere.

use super::kernels::{resized, simd_dispatch};

/// The output tile of a Winograd convolution: F(2×2, 3×3) or F(4×4, 3×3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

impl Tile {
    /// The side of an output tile.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// The side of an input patch and of a transformed tile: m + 2.
    pub fn alpha(self) -> usize {
        self.m() + 2
    }

    /// The points ξ of a transformed tile: one gemm each.
    pub fn points(self) -> usize {
        self.alpha() * self.alpha()
    }
}

/// Tiles per image: rows and columns of m×m output tiles covering an h × w image.
pub fn tiles(h: usize, w: usize, tile: Tile) -> (usize, usize) {
    (h.div_ceil(tile.m()), w.div_ceil(tile.m()))
}

/// The kernel (o, c, 3, 3) transformed: U_ξ = G g Gᵀ, laid out `[ξ][o][c]`.
pub fn weight_transform(w: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => weight_transform_f2(w, o, c),
        Tile::F4 => weight_transform_f4(w, o, c),
    }
}

/// The kernel gradient (o, c, 3, 3) from dU (`[ξ][o][c]`): dg = Gᵀ dU G.
pub fn weight_grad(du: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => weight_grad_f2(du, o, c),
        Tile::F4 => weight_grad_f4(du, o, c),
    }
}

/// V = Bᵀ d B for every tile of `imgs` images x (imgs, c, h, w), through relu when `relu`,
/// into `v` (`[ξ][T][c]`, T = imgs · th · tw). `scratch` is reused.
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
    }
}

/// y = relu?(Aᵀ M A + bias) for `imgs` images into `y` (imgs, o, h, w), from M (`[ξ][T][o]`).
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
    }
}

/// dM = A dY Aᵀ for every tile of `imgs` images, dY = dy (imgs, o, h, w) zeroed where `mask`
/// (laid out like dy) is ≤ 0, into `dm` (`[ξ][T][o]`); adds each channel's sum of dY to `sums`.
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

/// The tiling of `imgs` images of h × w with `ch` channels: tile rows and columns per image,
/// tiles per image, and the planes' stride.
fn tiling(imgs: usize, ch: usize, h: usize, w: usize, tile: Tile) -> (usize, usize, usize, usize) {
    let (th, tw) = tiles(h, w, tile);
    (th, tw, th * tw, plane_stride(imgs * th * tw * ch))
}

/// Floats of V and M (or dV and dM) for one image of c input and o output channels.
pub fn floats_per_image(c: usize, o: usize, h: usize, w: usize, tile: Tile) -> usize {
    let (th, tw) = tiles(h, w, tile);
    tile.points() * th * tw * (c + o)
}

/// One image (c, h, w), through relu when `relu`, into a channels-last plane `pw` pixels wide
/// at row 1, column 1 (the rest of the plane is left as it is: the zero padding).
#[inline(always)]
fn pad_channels_last(img: &[f32], c: usize, h: usize, w: usize, pw: usize, relu: bool, plane: &mut [f32]) {
    for (ci, src) in img.chunks_exact(h * w).enumerate() {
        for (y, srow) in src.chunks_exact(w).enumerate() {
            let at = ((y + 1) * pw + 1) * c + ci;
            for (x, v) in srow.iter().enumerate() {
                plane[at + x * c] = if relu { v.max(0.0) } else { *v };
            }
        }
    }
}

/// The interior of a channels-last plane `pw` pixels wide (from row 1, column 1) to one image
/// (c, h, w), zeroed where `mask` (laid out like the image) is ≤ 0.
#[inline(always)]
fn unpad_channels_last(acc: &[f32], c: usize, h: usize, w: usize, pw: usize, mask: Option<&[f32]>, dst: &mut [f32]) {
    for (ci, plane) in dst.chunks_exact_mut(h * w).enumerate() {
        for (yy, drow) in plane.chunks_exact_mut(w).enumerate() {
            let at = ((yy + 1) * pw + 1) * c + ci;
            for (x, d) in drow.iter_mut().enumerate() {
                *d = acc[at + x * c];
            }
        }
        if let Some(m) = mask {
            plane.iter_mut().zip(&m[ci * h * w..][..h * w]).for_each(|(d, m)| {
                if *m <= 0.0 {
                    *d = 0.0
                }
            });
        }
    }
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
        let mut acc = 0.0f32;
        for (yy, srow) in src.chunks_exact(w).enumerate() {
            let at = yy * pw * o + oc;
            let mrow = mask.map(|m| &m[oc * h * w + yy * w..][..w]);
            for (x, s) in srow.iter().enumerate() {
                let v = match mrow {
                    Some(m) if m[x] <= 0.0 => 0.0,
                    _ => *s,
                };
                acc += v;
                full[at + x * o] = v;
            }
        }
        sums[oc] += acc;
    }
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
    for (oc, plane) in dst.chunks_exact_mut(h * w).enumerate() {
        let b = bias.map(|bb| bb[oc]);
        for (yy, drow) in plane.chunks_exact_mut(w).enumerate() {
            let at = yy * pw * o + oc;
            for (x, d) in drow.iter_mut().enumerate() {
                let v = full[at + x * o];
                let v = match b {
                    Some(b) => v + b,
                    None => v,
                };
                *d = if relu { v.max(0.0) } else { v };
            }
        }
    }
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
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w, Tile::F2);
        // One zero row/column before the image and enough after it for whole tiles.
        let (ph, pw) = (2 * th + 2, 2 * tw + 2);
        let plane = resized(scratch, ph * pw * c);
        plane.fill(0.0);
        for img in 0..imgs {
            pad_channels_last(&x[img * c * h * w..][..c * h * w], c, h, w, pw, relu, plane);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        let d = |i: usize, j: usize| &plane[((2 * a + i) * pw + 2 * b + j) * c + cb..][..n];
                        // Bᵀ d: s[i·4 + j].
                        let mut s = [[0.0f32; CB]; 16];
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
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, Tile::F2);
        // One image's output, channels last, on whole tiles.
        let (ph, pw) = (2 * th, 2 * tw);
        let full = resized(scratch, ph * pw * o);
        for img in 0..imgs {
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..o).step_by(CB) {
                        let n = CB.min(o - cb);
                        let mv = |i: usize, j: usize| &m[(4 * i + j) * ps + t * o + cb..][..n];
                        // Aᵀ M: u[r·4 + j].
                        let mut u = [[0.0f32; CB]; 8];
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
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, Tile::F2);
        // One image's dY, channels last, on whole tiles (zeros past the image).
        let (ph, pw) = (2 * th, 2 * tw);
        let full = resized(scratch, ph * pw * o);
        full.fill(0.0);
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
                        let mut z = [[0.0f32; CB]; 8];
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
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w, Tile::F2);
        // The padded input plane, channels last, as an accumulator.
        let (ph, pw) = (2 * th + 2, 2 * tw + 2);
        let acc = resized(scratch, ph * pw * c);
        for img in 0..imgs {
            acc.fill(0.0);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        let vv = |i: usize, j: usize| &dv[(4 * i + j) * ps + t * c + cb..][..n];
                        // dV Bᵀ: r[i·4 + j].
                        let mut r = [[0.0f32; CB]; 16];
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

/// [`weight_transform`] for F(4×4, 3×3).
fn weight_transform_f4(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 36 * o * c];
    weight_transform_f4_into(w, o * c, &mut u);
    u
}

simd_dispatch! {
    /// U = G g Gᵀ for the `plane` = o · c kernels of w, blocks of CB kernels at a time (the
    /// taps gathered into runs, so that the transform runs on whole runs).
    fn weight_transform_f4_into(w: &[f32], plane: usize, u: &mut [f32]) {
        for b0 in (0..plane).step_by(CB) {
            let n = CB.min(plane - b0);
            let mut g = [[0.0f32; CB]; 9];
            for (q, taps) in w[b0 * 9..][..n * 9].chunks_exact(9).enumerate() {
                for (k, t) in taps.iter().enumerate() {
                    g[k][q] = *t;
                }
            }
            // G g, column j into s[6j..6j + 6].
            let mut s = [[0.0f32; CB]; 18];
            for j in 0..3 {
                lines(g4, [&g[j][..], &g[3 + j][..], &g[6 + j][..]], rows(&mut s, 6 * j), n, false);
            }
            // (G g) Gᵀ, row i into the planes 6i..6i + 6.
            for i in 0..6 {
                lines(g4, [&s[i][..], &s[6 + i][..], &s[12 + i][..]], runs(u, 6 * i * plane + b0, plane), n, false);
            }
        }
    }
}

/// [`weight_grad`] for F(4×4, 3×3).
fn weight_grad_f4(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; 9 * o * c];
    weight_grad_f4_into(du, o * c, &mut dw);
    dw
}

simd_dispatch! {
    /// dg = Gᵀ dU G for the `plane` = o · c kernels, blocks of CB kernels at a time.
    fn weight_grad_f4_into(du: &[f32], plane: usize, dw: &mut [f32]) {
        for b0 in (0..plane).step_by(CB) {
            let n = CB.min(plane - b0);
            // Gᵀ dU, column j into r[3j..3j + 3].
            let mut r = [[0.0f32; CB]; 18];
            for j in 0..6 {
                lines(gt4, std::array::from_fn(|i| &du[(6 * i + j) * plane + b0..]), rows(&mut r, 3 * j), n, false);
            }
            // (Gᵀ dU) G, row a into taps 3a..3a + 3.
            let mut g = [[0.0f32; CB]; 9];
            for a in 0..3 {
                let row: [&[f32]; 6] = std::array::from_fn(|j| &r[3 * j + a][..]);
                lines(gt4, row, rows(&mut g, 3 * a), n, false);
            }
            for (q, taps) in dw[b0 * 9..][..n * 9].chunks_exact_mut(9).enumerate() {
                for (k, t) in taps.iter_mut().enumerate() {
                    *t = g[k][q];
                }
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

/// outs[o][k] = f(ins[·][k])[o] (or += when `add`) for k < n: one line transform applied to
/// runs of n channels, a loop the compiler vectorises.
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
    for k in 0..n {
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

simd_dispatch! {
    /// [`input_transform`] for F(4×4, 3×3).
    fn input_transform_f4(
        x: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        relu: bool,
        v: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w, Tile::F4);
        // One zero row/column before the image and enough after it for whole tiles.
        let (ph, pw) = (4 * th + 2, 4 * tw + 2);
        let plane = resized(scratch, ph * pw * c);
        plane.fill(0.0);
        for img in 0..imgs {
            pad_channels_last(&x[img * c * h * w..][..c * h * w], c, h, w, pw, relu, plane);
            let plane = &*plane;
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        let d = |i: usize, j: usize| &plane[((4 * a + i) * pw + 4 * b + j) * c + cb..];
                        // Bᵀ d, column j into s[6j..6j + 6].
                        let mut s = [[0.0f32; CB]; 36];
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
    }
}

simd_dispatch! {
    /// [`output_transform`] for F(4×4, 3×3).
    fn output_transform_f4(
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
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, Tile::F4);
        // One image's output, channels last, on whole tiles.
        let pw = 4 * tw;
        let full = resized(scratch, 4 * th * pw * o);
        for img in 0..imgs {
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..o).step_by(CB) {
                        let n = CB.min(o - cb);
                        let mv = |i: usize, j: usize| &m[(6 * i + j) * ps + t * o + cb..];
                        // Aᵀ M, column j into u[4j..4j + 4].
                        let mut u = [[0.0f32; CB]; 24];
                        for j in 0..6 {
                            lines(at4, std::array::from_fn(|i| mv(i, j)), rows(&mut u, 4 * j), n, false);
                        }
                        // (Aᵀ M) A, row r into the tile's output row r.
                        for r in 0..4 {
                            let row: [&[f32]; 6] = std::array::from_fn(|j| &u[4 * j + r][..]);
                            lines(at4, row, runs(full, ((4 * a + r) * pw + 4 * b) * o + cb, o), n, false);
                        }
                    }
                }
            }
            // Channels last to (o, h, w), with the bias and the relu.
            from_channels_last(full, o, h, w, pw, bias, relu, &mut y[img * o * h * w..][..o * h * w]);
        }
    }
}

simd_dispatch! {
    /// [`grad_output_transform`] for F(4×4, 3×3).
    fn grad_output_transform_f4(
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
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w, Tile::F4);
        // One image's dY, channels last, on whole tiles (zeros past the image).
        let pw = 4 * tw;
        let full = resized(scratch, 4 * th * pw * o);
        full.fill(0.0);
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
                        let g = |r: usize, q: usize| &full[((4 * a + r) * pw + 4 * b + q) * o + cb..];
                        // dY Aᵀ, row r into z[6r..6r + 6].
                        let mut z = [[0.0f32; CB]; 24];
                        for r in 0..4 {
                            lines(a4, std::array::from_fn(|q| g(r, q)), rows(&mut z, 6 * r), n, false);
                        }
                        // A (dY Aᵀ), column j into the planes j, 6 + j, …, 30 + j.
                        for j in 0..6 {
                            let col: [&[f32]; 4] = std::array::from_fn(|r| &z[6 * r + j][..]);
                            lines(a4, col, runs(dm, j * ps + t * o + cb, 6 * ps), n, false);
                        }
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// [`grad_input_transform`] for F(4×4, 3×3).
    fn grad_input_transform_f4(
        dv: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        mask: Option<&[f32]>,
        dx: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w, Tile::F4);
        // The padded input plane, channels last, as an accumulator.
        let (ph, pw) = (4 * th + 2, 4 * tw + 2);
        let acc = resized(scratch, ph * pw * c);
        for img in 0..imgs {
            acc.fill(0.0);
            for a in 0..th {
                for b in 0..tw {
                    let t = img * tpi + a * tw + b;
                    for cb in (0..c).step_by(CB) {
                        let n = CB.min(c - cb);
                        // dV Bᵀ, row i into r[6i..6i + 6].
                        let mut r = [[0.0f32; CB]; 36];
                        for i in 0..6 {
                            let row: [&[f32]; 6] = std::array::from_fn(|j| &dv[(6 * i + j) * ps + t * c + cb..]);
                            lines(b4, row, rows(&mut r, 6 * i), n, false);
                        }
                        // B (dV Bᵀ), column l added into the patch's column l.
                        for l in 0..6 {
                            let col: [&[f32]; 6] = std::array::from_fn(|i| &r[6 * i + l][..]);
                            lines(b4, col, runs(acc, ((4 * a) * pw + 4 * b + l) * c + cb, pw * c), n, true);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct 3×3, stride 1, pad 1 convolution in f64, the oracle.
    /// Also the sum of the products' magnitudes of each output, the scale its rounding
    /// errors are relative to.
    fn direct(x: &[f32], wt: &[f32], n: usize, c: usize, o: usize, h: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0f64; n * o * h * w];
        let mut scale = vec![0.0f64; n * o * h * w];
        for img in 0..n {
            for oc in 0..o {
                for yy in 0..h {
                    for xx in 0..w {
                        let (mut s, mut a) = (0.0f64, 0.0f64);
                        for ci in 0..c {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (sy, sx) = (yy as isize + i as isize - 1, xx as isize + j as isize - 1);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let p = x[((img * c + ci) * h + sy as usize) * w + sx as usize] as f64
                                        * wt[((oc * c + ci) * 3 + i) * 3 + j] as f64;
                                    s += p;
                                    a += p.abs();
                                }
                            }
                        }
                        y[((img * o + oc) * h + yy) * w + xx] = s;
                        scale[((img * o + oc) * h + yy) * w + xx] = a;
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
        let (th, tw) = tiles(h, w, tile);
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
        let mut y = vec![0.0f32; n * o * h * w];
        output_transform(tile, &m, n, o, h, w, None, false, &mut y, &mut Vec::new());
        y
    }

    #[test]
    fn the_transforms_compute_a_direct_convolution() {
        // Odd and even sides (a partial last tile), one and several images and channels.
        // Both tiles; sides that are and are not whole numbers of tiles. Errors relative to the
        // sum of the products' magnitudes, the scale of any summation order's rounding.
        let mut seed = 7u64;
        for tile in [Tile::F2, Tile::F4] {
            for (n, c, o, h, w) in
                [(1, 1, 1, 1, 1), (2, 3, 2, 7, 7), (1, 2, 3, 4, 5), (3, 4, 2, 8, 3), (1, 3, 2, 9, 12)]
            {
                let x: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
                let wt: Vec<f32> = (0..o * c * 9).map(|_| lcg(&mut seed)).collect();
                let y = forward(&x, &wt, n, c, o, h, w, tile);
                let (r, scale) = direct(&x, &wt, n, c, o, h, w);
                let worst = y
                    .iter()
                    .zip(&r)
                    .zip(&scale)
                    .map(|((a, b), s)| (*a as f64 - b).abs() / s.max(1e-30))
                    .fold(0.0, f64::max);
                // Measured: F2 ≤ 1.5e-7, F4 ≤ 3.4e-6 (its larger coefficients round worse).
                let bound = if tile == Tile::F2 { 1e-6 } else { 1e-5 };
                assert!(worst < bound, "{worst:e} for {:?}", (tile, n, c, o, h, w));
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
        for tile in [Tile::F2, Tile::F4] {
            for (n, c, h, w) in [(2usize, 3usize, 5usize, 6usize), (1, 70, 7, 7)] {
                let pts = tile.points();
                let (th, tw) = tiles(h, w, tile);
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
                let dy: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
                let mut y = vec![0.0f32; dy.len()];
                output_transform(tile, &m, n, c, h, w, None, false, &mut y, &mut Vec::new());
                let mut dm = vec![0.0f32; m.len()];
                let mut sums = vec![0.0f32; c];
                grad_output_transform(tile, &dy, None, n, c, h, w, &mut dm, &mut sums, &mut Vec::new());
                assert!(close(dot(&y, &dy), dot(&m, &dm)), "{tile:?} {c}: {:?} {:?}", dot(&y, &dy), dot(&m, &dm));
                for (ci, s) in sums.iter().enumerate() {
                    let want: f32 = (0..n).map(|i| dy[(i * c + ci) * h * w..][..h * w].iter().sum::<f32>()).sum();
                    assert!((s - want).abs() < 1e-4);
                }

                let g: Vec<f32> = (0..2 * c * 9).map(|_| lcg(&mut seed)).collect();
                let du: Vec<f32> = (0..pts * 2 * c).map(|_| lcg(&mut seed)).collect();
                let u = weight_transform(&g, 2, c, tile);
                let dg = weight_grad(&du, 2, c, tile);
                assert!(close(dot(&u, &du), dot(&g, &dg)), "{tile:?} {c}: {:?} {:?}", dot(&u, &du), dot(&g, &dg));
            }
        }
    }
}
