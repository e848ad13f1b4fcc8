//! The layout passes between channel planes (NCHW: one run of pixels per channel) and pixel
//! rows (channels last: one run of channels per pixel) that the convolutions make around
//! their gemms and Winograd transforms, with the bias, relu and mask work fused into them.
//!
//! Written as loops, one side of such a pass is a stride-c access per value, which the
//! compiler cannot vectorise: a scalar load or store for every value. Where the CPU has AVX2,
//! these run on 8 channels × 8 pixels at a time, transposed in registers (8 vector loads,
//! 24 shuffles, 8 vector stores); the edges that do not fill a block take the scalar loop.
//! Both give the same bits: the fused operations are the same IEEE operations in the same
//! order (`max(v, 0)` with v first, as `f32::max(v, 0.0)` compiles, the bias added only
//! where the scalar loop adds it), checked by the tests below on values that include −0, NaN
//! and negative numbers.

/// What a pass does to each value besides moving it: `v + bias[ci]` (when given), then
/// `max(v, 0)` (with `relu`), then 0 where the mask (laid out like the channel planes) is ≤ 0.
#[derive(Clone, Copy, Default)]
pub struct Post<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    pub mask: Option<&'a [f32]>,
}

impl Post<'_> {
    #[inline(always)]
    fn apply(&self, v: f32, ci: usize, mask_at: usize) -> f32 {
        let v = match self.bias {
            Some(b) => v + b[ci],
            None => v,
        };
        let v = if self.relu { v.max(0.0) } else { v };
        match self.mask {
            Some(m) if m[mask_at] <= 0.0 => 0.0,
            _ => v,
        }
    }
}

/// The pixel-row offsets of an h × w image inside a channels-last plane `plane_w` pixels wide,
/// its corner at row and column `pad`, `c` floats a pixel: pixel p (row-major in the image)
/// starts at `((p / w + pad) · plane_w + p % w + pad) · c`. The `at` of [`pass`] for a padded
/// plane (pad 0: a plane whose corner is the image's).
pub fn in_plane(w: usize, plane_w: usize, pad: usize, c: usize) -> impl Fn(usize) -> usize + Copy {
    move |p| ((p / w + pad) * plane_w + p % w + pad) * c
}

/// [`pass`]'s direction: channel planes to pixel rows.
pub const TO_PIXELS: bool = true;
/// [`pass`]'s direction: pixel rows to channel planes.
pub const TO_PLANES: bool = false;

/// One layout pass for every channel ci < c and pixel p < hw, the pixel row of p starting at
/// `at(p)`:
/// - [`TO_PIXELS`]: `dst[at(p) + ci] = post(src[ci·hw + p])`, the mask laid out like `src`;
/// - [`TO_PLANES`]: `dst[ci·hw + p] = post(src[at(p) + ci])`, the mask laid out like `dst`.
pub fn pass<const TO_PIXELS: bool>(
    src: &[f32],
    c: usize,
    hw: usize,
    post: Post<'_>,
    at: impl Fn(usize) -> usize + Copy,
    dst: &mut [f32],
) {
    let planes = if TO_PIXELS { src.len() } else { dst.len() };
    assert!(planes >= c * hw, "channel planes of {planes} values for {c} × {hw}");
    if let Some(b) = post.bias {
        assert!(b.len() >= c, "a bias of {} values for {c} channels", b.len());
    }
    if let Some(m) = post.mask {
        assert!(m.len() >= c * hw, "a mask of {} values for {c} × {hw}", m.len());
    }
    #[cfg(target_arch = "x86_64")]
    if super::kernels::wide_simd() && c >= 8 && hw >= 8 {
        // SAFETY: the CPU has AVX2 (checked at run time); the planes' length is checked above,
        // and the function checks the pixel rows' before its unchecked vector accesses.
        unsafe { avx::run::<TO_PIXELS>(src, c, hw, post, at, dst) };
        return;
    }
    scalar::<TO_PIXELS>(src, hw, post, at, dst, 0..hw, 0..c);
}

/// The scalar loop of either pass over some pixels and channels.
#[inline(always)]
fn scalar<const TO_PIXELS: bool>(
    src: &[f32],
    hw: usize,
    post: Post<'_>,
    at: impl Fn(usize) -> usize,
    dst: &mut [f32],
    pixels: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
) {
    for p in pixels {
        let base = at(p);
        for ci in channels.clone() {
            let plane = ci * hw + p;
            if TO_PIXELS {
                dst[base + ci] = post.apply(src[plane], ci, plane);
            } else {
                dst[plane] = post.apply(src[base + ci], ci, plane);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{scalar, Post};

    /// The 8 × 8 transpose of the rows r: out[k][j] = r[j][k].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// [`Post`] on 8 values of channel `ci` whose mask entries start at `mask_at`: + bias,
    /// then max(v, 0) as `f32::max(v, 0.0)` compiles (`maxps v, 0`: 0 for v = −0 or NaN), then
    /// 0 where the mask is ≤ 0 (ordered: a NaN mask keeps v).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn post8(v: __m256, post: &Post<'_>, ci: usize, mask_at: usize) -> __m256 {
        let zero = _mm256_setzero_ps();
        let v = match post.bias {
            Some(b) => _mm256_add_ps(v, _mm256_set1_ps(b[ci])),
            None => v,
        };
        let v = if post.relu { _mm256_max_ps(v, zero) } else { v };
        match post.mask {
            Some(m) => {
                let m = &m[mask_at..mask_at + 8];
                // SAFETY: `m` holds the 8 values read.
                let m = unsafe { _mm256_loadu_ps(m.as_ptr()) };
                _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(m, zero), v)
            }
            None => v,
        }
    }

    /// [`super::pass`] on whole blocks of 8 pixels × 8 channels, transposed in registers, and
    /// the scalar loop on the rest. The caller checked that the channel planes hold c·hw
    /// values; the pixel rows are checked here.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run<const TO_PIXELS: bool>(
        src: &[f32],
        c: usize,
        hw: usize,
        post: Post<'_>,
        at: impl Fn(usize) -> usize + Copy,
        dst: &mut [f32],
    ) {
        let (pb, cb) = (hw - hw % 8, c - c % 8);
        let rows_len = if TO_PIXELS { dst.len() } else { src.len() };
        for p0 in (0..pb).step_by(8) {
            let bases: [usize; 8] = std::array::from_fn(|k| at(p0 + k));
            for b in bases {
                assert!(b + c <= rows_len, "pixel row at {b} + {c} channels outside {rows_len}");
            }
            for c0 in (0..cb).step_by(8) {
                let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
                // In registers: 8 runs of the source (channel planes or pixel rows), transposed
                // into 8 runs of the destination. Every run is 8 floats from an offset checked
                // above: bases[k] + c0 + 8 ≤ bases[k] + c, (c0 + j)·hw + p0 + 8 ≤ c·hw.
                let mut r = [_mm256_setzero_ps(); 8];
                for (j, r) in r.iter_mut().enumerate() {
                    let plane = (c0 + j) * hw + p0;
                    // SAFETY: see above.
                    *r = if TO_PIXELS {
                        post8(unsafe { _mm256_loadu_ps(s.add(plane)) }, &post, c0 + j, plane)
                    } else {
                        unsafe { _mm256_loadu_ps(s.add(bases[j] + c0)) }
                    };
                }
                for (k, v) in transpose8(r).into_iter().enumerate() {
                    let plane = (c0 + k) * hw + p0;
                    // SAFETY: see above.
                    if TO_PIXELS {
                        unsafe { _mm256_storeu_ps(d.add(bases[k] + c0), v) };
                    } else {
                        unsafe { _mm256_storeu_ps(d.add(plane), post8(v, &post, c0 + k, plane)) };
                    }
                }
            }
            scalar::<TO_PIXELS>(src, hw, post, at, dst, p0..p0 + 8, cb..c);
        }
        scalar::<TO_PIXELS>(src, hw, post, at, dst, pb..hw, 0..c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Values with −0, +0, NaN and both signs, so that relu, masks and bias adds that differ
    /// from the scalar loop in any bit show.
    fn values(n: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..n)
            .map(|_| match rng.random_range(0..10) {
                0 => -0.0,
                1 => 0.0,
                2 => f32::NAN,
                _ => rng.random_range(-2.0f32..2.0),
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn both_directions_give_the_scalar_loops_bits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // Channel and pixel counts on and off the 8 × 8 blocks, and a padded pixel layout
        // (7 × 7 pixels in a 10-wide plane from row 1, column 1) like the Winograd planes'.
        for (c, h, w) in [(8, 1, 8), (16, 7, 7), (13, 3, 5), (128, 7, 7), (3, 4, 4), (24, 14, 14), (64, 1, 9)] {
            let (hw, pw) = (h * w, w + 3);
            let at = in_plane(w, pw, 1, c);
            let plane_len = (h + 3) * pw * c;
            let src = values(c * hw, &mut rng);
            let (bias, mask) = (values(c, &mut rng), values(c * hw, &mut rng));
            for (use_bias, relu, use_mask) in
                [(false, false, false), (true, true, true), (false, true, false), (true, false, true)]
            {
                let post = Post { bias: use_bias.then_some(&bias[..]), relu, mask: use_mask.then_some(&mask[..]) };
                let fill = values(plane_len, &mut rng);
                let (mut fast, mut slow) = (fill.clone(), fill.clone());
                pass::<TO_PIXELS>(&src, c, hw, post, at, &mut fast);
                scalar::<true>(&src, hw, post, at, &mut slow, 0..hw, 0..c);
                assert_eq!(bits(&fast), bits(&slow), "to pixels c={c} {h}×{w}");
                // What the scalar loop computes, by hand for one value away from the edges.
                let (ci, p) = (c - 1, hw - 1);
                let mut want = src[ci * hw + p];
                if use_bias {
                    want += bias[ci];
                }
                if relu {
                    want = want.max(0.0);
                }
                if use_mask && mask[ci * hw + p] <= 0.0 {
                    want = 0.0;
                }
                assert_eq!(slow[at(p) + ci].to_bits(), want.to_bits());
                // The padding around the pixels is left as it was.
                assert_eq!(fast[0].to_bits(), fill[0].to_bits());

                let rows = values(plane_len, &mut rng);
                let fill = values(c * hw, &mut rng);
                let (mut fast, mut slow) = (fill.clone(), fill.clone());
                pass::<TO_PLANES>(&rows, c, hw, post, at, &mut fast);
                scalar::<false>(&rows, hw, post, at, &mut slow, 0..hw, 0..c);
                assert_eq!(bits(&fast), bits(&slow), "to planes c={c} {h}×{w}");
                assert_eq!(slow[0].to_bits(), post.apply(rows[at(0)], 0, 0).to_bits());
            }
        }
    }

    #[test]
    fn a_hand_transposed_block() {
        // 2 channels × 3 pixels, contiguous pixel rows: (c, hw) → (hw, c).
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dst = [0.0f32; 6];
        pass::<TO_PIXELS>(&src, 2, 3, Post::default(), |p| 2 * p, &mut dst);
        assert_eq!(dst, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let mut back = [0.0f32; 6];
        pass::<TO_PLANES>(&dst, 2, 3, Post::default(), |p| 2 * p, &mut back);
        assert_eq!(back, src);
        // 8 × 8, the vector path: element (ci, p) = 10·ci + p lands at p·8 + ci.
        let src: Vec<f32> = (0..64).map(|i| (10 * (i / 8) + i % 8) as f32).collect();
        let mut dst = vec![0.0f32; 64];
        pass::<TO_PIXELS>(&src, 8, 8, Post::default(), |p| 8 * p, &mut dst);
        for ci in 0..8 {
            for p in 0..8 {
                assert_eq!(dst[p * 8 + ci], (10 * ci + p) as f32);
            }
        }
    }
}
