//! Winograd F(2×2, 3×3) for 3×3 convolutions with stride 1 and padding 1 (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into 2×2 tiles; tile t reads the 4×4 input patch d_t around it. With
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
//! Layouts: U is `[ξ][o][c]`; V, dV are `[ξ][T][c]`; M, dM are `[ξ][T][o]` (channels last,
//! so that the transforms run on runs of channels), with the tile index t = (image · th +
//! tile row) · tw + tile column, and the 16 planes [`plane_stride`] apart. Images are
//! (imgs, c, h, w) as everywhere.

use super::kernels::{resized, simd_dispatch};

/// Tiles per image: rows and columns of 2×2 output tiles covering an h × w image.
pub fn tiles(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(2), w.div_ceil(2))
}

/// The kernel (o, c, 3, 3) transformed: U_ξ = G g Gᵀ, laid out `[ξ][o][c]`.
pub fn weight_transform(w: &[f32], o: usize, c: usize) -> Vec<f32> {
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

/// The kernel gradient (o, c, 3, 3) from dU (`[ξ][o][c]`): dg = Gᵀ dU G.
pub fn weight_grad(du: &[f32], o: usize, c: usize) -> Vec<f32> {
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
fn tiling(imgs: usize, ch: usize, h: usize, w: usize) -> (usize, usize, usize, usize) {
    let (th, tw) = tiles(h, w);
    (th, tw, th * tw, plane_stride(imgs * th * tw * ch))
}

/// Floats of V, dV, M and dM for one image of c input and o output channels.
pub fn floats_per_image(c: usize, o: usize, h: usize, w: usize) -> usize {
    let (th, tw) = tiles(h, w);
    16 * th * tw * (c + o)
}

/// Channels per block of the transforms' vector loops.
const CB: usize = 64;

simd_dispatch! {
    /// V = Bᵀ d B for every tile of `imgs` images x (imgs, c, h, w), through relu when `relu`,
    /// into `v` (`[ξ][T][c]`, T = imgs · th · tw). Each image is first copied into a zero-padded
    /// channels-last plane, so that a tile's 16 inputs are 16 runs of c values and the
    /// transform runs on whole runs. `scratch` is reused.
    pub fn input_transform(
        x: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        relu: bool,
        v: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w);
        // One zero row/column before the image and enough after it for whole tiles.
        let (ph, pw) = (2 * th + 2, 2 * tw + 2);
        let plane = resized(scratch, ph * pw * c);
        plane.fill(0.0);
        for img in 0..imgs {
            for (ci, src) in x[img * c * h * w..][..c * h * w].chunks_exact(h * w).enumerate() {
                for (y, srow) in src.chunks_exact(w).enumerate() {
                    let at = ((y + 1) * pw + 1) * c + ci;
                    for (x, v) in srow.iter().enumerate() {
                        plane[at + x * c] = if relu { v.max(0.0) } else { *v };
                    }
                }
            }
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
    pub fn output_transform(
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
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w);
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
            let dst = &mut y[img * o * h * w..][..o * h * w];
            for (oc, plane) in dst.chunks_exact_mut(h * w).enumerate() {
                for (yy, drow) in plane.chunks_exact_mut(w).enumerate() {
                    let at = yy * pw * o + oc;
                    for (x, d) in drow.iter_mut().enumerate() {
                        *d = full[at + x * o];
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// dM = A dY Aᵀ for every tile of `imgs` images, dY = dy (imgs, o, h, w) zeroed where
    /// `mask` (laid out like dy) is ≤ 0, into `dm` (`[ξ][T][o]`); adds each channel's sum of dY
    /// to `sums`. `scratch` is reused.
    pub fn grad_output_transform(
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
        let (th, tw, tpi, ps) = tiling(imgs, o, h, w);
        // One image's dY, channels last, on whole tiles (zeros past the image).
        let (ph, pw) = (2 * th, 2 * tw);
        let full = resized(scratch, ph * pw * o);
        full.fill(0.0);
        for img in 0..imgs {
            let base = img * o * h * w;
            for (oc, src) in dy[base..][..o * h * w].chunks_exact(h * w).enumerate() {
                let mut acc = 0.0f32;
                for (yy, srow) in src.chunks_exact(w).enumerate() {
                    let at = yy * pw * o + oc;
                    let mrow = mask.map(|m| &m[base + oc * h * w + yy * w..][..w]);
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
    pub fn grad_input_transform(
        dv: &[f32],
        imgs: usize,
        c: usize,
        h: usize,
        w: usize,
        mask: Option<&[f32]>,
        dx: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (th, tw, tpi, ps) = tiling(imgs, c, h, w);
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
            let dst = &mut dx[base..][..c * h * w];
            for (ci, plane) in dst.chunks_exact_mut(h * w).enumerate() {
                for (yy, drow) in plane.chunks_exact_mut(w).enumerate() {
                    let at = ((yy + 1) * pw + 1) * c + ci;
                    for (x, d) in drow.iter_mut().enumerate() {
                        *d = acc[at + x * c];
                    }
                }
                if let Some(m) = mask {
                    plane.iter_mut().zip(&m[base + ci * h * w..][..h * w]).for_each(|(d, m)| {
                        if *m <= 0.0 {
                            *d = 0.0
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct 3×3, stride 1, pad 1 convolution in f64, the oracle.
    fn direct(x: &[f32], wt: &[f32], n: usize, c: usize, o: usize, h: usize, w: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; n * o * h * w];
        for img in 0..n {
            for oc in 0..o {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut s = 0.0f64;
                        for ci in 0..c {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (sy, sx) = (yy as isize + i as isize - 1, xx as isize + j as isize - 1);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    s += x[((img * c + ci) * h + sy as usize) * w + sx as usize] as f64
                                        * wt[((oc * c + ci) * 3 + i) * 3 + j] as f64;
                                }
                            }
                        }
                        y[((img * o + oc) * h + yy) * w + xx] = s;
                    }
                }
            }
        }
        y
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Forward through the transforms and a naive product in the Winograd domain.
    fn forward(x: &[f32], wt: &[f32], n: usize, c: usize, o: usize, h: usize, w: usize) -> Vec<f32> {
        let (th, tw) = tiles(h, w);
        let t_all = n * th * tw;
        let (sv, sm) = (plane_stride(c * t_all), plane_stride(o * t_all));
        let mut v = vec![0.0f32; 16 * sv];
        input_transform(x, n, c, h, w, false, &mut v, &mut Vec::new());
        let u = weight_transform(wt, o, c);
        let mut m = vec![0.0f32; 16 * sm];
        for xi in 0..16 {
            for oc in 0..o {
                for t in 0..t_all {
                    m[xi * sm + t * o + oc] =
                        (0..c).map(|ci| u[(xi * o + oc) * c + ci] * v[xi * sv + t * c + ci]).sum();
                }
            }
        }
        let mut y = vec![0.0f32; n * o * h * w];
        output_transform(&m, n, o, h, w, None, false, &mut y, &mut Vec::new());
        y
    }

    #[test]
    fn the_transforms_compute_a_direct_convolution() {
        // Odd and even sides (a partial last tile), one and several images and channels.
        let mut seed = 7u64;
        for (n, c, o, h, w) in [(1, 1, 1, 1, 1), (2, 3, 2, 7, 7), (1, 2, 3, 4, 5), (3, 4, 2, 8, 3)] {
            let x: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
            let wt: Vec<f32> = (0..o * c * 9).map(|_| lcg(&mut seed)).collect();
            let y = forward(&x, &wt, n, c, o, h, w);
            let r = direct(&x, &wt, n, c, o, h, w);
            for (a, b) in y.iter().zip(&r) {
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b} for {:?}", (n, c, o, h, w));
            }
        }
    }

    #[test]
    fn the_adjoint_transforms_are_adjoints() {
        // ⟨T x, y⟩ = ⟨x, Tᵀ y⟩ for the input transform and its adjoint, the output transform
        // and its adjoint, and the weight transform and the weight gradient.
        let mut seed = 11u64;
        let (n, c, h, w) = (2usize, 3usize, 5usize, 6usize);
        let (th, tw) = tiles(h, w);
        let t_all = n * th * tw;
        let x: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
        let dv: Vec<f32> = (0..16 * plane_stride(c * t_all)).map(|_| lcg(&mut seed)).collect();
        let mut v = vec![0.0f32; 16 * plane_stride(c * t_all)];
        input_transform(&x, n, c, h, w, false, &mut v, &mut Vec::new());
        let mut dx = vec![0.0f32; x.len()];
        grad_input_transform(&dv, n, c, h, w, None, &mut dx, &mut Vec::new());
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
        assert!((dot(&v, &dv) - dot(&x, &dx)).abs() < 1e-4);

        // Only the planes' first c · T floats are read and written; the gaps stay zero.
        let sp = plane_stride(c * t_all);
        let m: Vec<f32> = (0..16 * sp).map(|i| if i % sp < c * t_all { lcg(&mut seed) } else { 0.0 }).collect();
        let dy: Vec<f32> = (0..n * c * h * w).map(|_| lcg(&mut seed)).collect();
        let mut y = vec![0.0f32; dy.len()];
        output_transform(&m, n, c, h, w, None, false, &mut y, &mut Vec::new());
        let mut dm = vec![0.0f32; m.len()];
        let mut sums = vec![0.0f32; c];
        grad_output_transform(&dy, None, n, c, h, w, &mut dm, &mut sums, &mut Vec::new());
        assert!((dot(&y, &dy) - dot(&m, &dm)).abs() < 1e-4);
        for (ci, s) in sums.iter().enumerate() {
            let want: f32 = (0..n).map(|i| dy[(i * c + ci) * h * w..][..h * w].iter().sum::<f32>()).sum();
            assert!((s - want).abs() < 1e-4);
        }

        let g: Vec<f32> = (0..2 * c * 9).map(|_| lcg(&mut seed)).collect();
        let du: Vec<f32> = (0..16 * 2 * c).map(|_| lcg(&mut seed)).collect();
        let u = weight_transform(&g, 2, c);
        let dg = weight_grad(&du, 2, c);
        assert!((dot(&u, &du) - dot(&g, &dg)).abs() < 1e-4);
    }
}
