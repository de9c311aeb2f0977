//! Dot product and squared L2 distance over f32 slices, with AVX-512 or AVX2+FMA kernels chosen at
//! run time (the release build targets plain x86-64) and portable fallbacks.

/// A distance kernel over two slices of equal length.
pub type Kernel = fn(&[f32], &[f32]) -> f32;

/// The dot-product kernel for this CPU.
pub fn dot_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return dot_avx512;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return dot_avx2;
    }
    dot_portable
}

/// The squared-L2 kernel for this CPU.
pub fn l2_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return l2_avx512;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return l2_avx2;
    }
    l2_portable
}

/// Which kernels [`dot_kernel`] and [`l2_kernel`] picked, for benchmark logs.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return "avx512f";
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return "avx2+fma";
    }
    "portable"
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only returned by `dot_kernel` when the CPU has AVX-512F.
    unsafe { sum_avx512::<false>(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn l2_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only returned by `l2_kernel` when the CPU has AVX-512F.
    unsafe { sum_avx512::<true>(a, b) }
}

/// Σ a·b, or Σ (a - b)² when `L2`, 32 lanes per step in two accumulators, the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let term = |x: __m512, y: __m512, sum: __m512| {
        if L2 {
            let d = _mm512_sub_ps(x, y);
            _mm512_fmadd_ps(d, d, sum)
        } else {
            _mm512_fmadd_ps(x, y, sum)
        }
    };
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    // SAFETY (loads): every offset read is below `n`, the length of both slices; the masked
    // load reads only the lanes below `n`.
    while i + 32 <= n {
        for (lane, sum) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm512_loadu_ps(pa.add(i + lane * 16)) };
            let y = unsafe { _mm512_loadu_ps(pb.add(i + lane * 16)) };
            *sum = term(x, y, *sum);
        }
        i += 32;
    }
    while i < n {
        let left = (n - i).min(16);
        let mask: __mmask16 = if left == 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        let x = unsafe { _mm512_maskz_loadu_ps(mask, pa.add(i)) };
        let y = unsafe { _mm512_maskz_loadu_ps(mask, pb.add(i)) };
        acc[0] = term(x, y, acc[0]);
        i += left;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only returned by `dot_kernel` when the CPU has AVX2 and FMA.
    unsafe { sum_avx2::<false>(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only returned by `l2_kernel` when the CPU has AVX2 and FMA.
    unsafe { sum_avx2::<true>(a, b) }
}

/// Σ a·b, or Σ (a - b)² when `L2`, 32 lanes per step in four accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let term = |x: __m256, y: __m256, sum: __m256| {
        if L2 {
            let d = _mm256_sub_ps(x, y);
            _mm256_fmadd_ps(d, d, sum)
        } else {
            _mm256_fmadd_ps(x, y, sum)
        }
    };
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (loads): every offset read is below `n`, the length of both slices.
    while i + 32 <= n {
        for (lane, sum) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_loadu_ps(pa.add(i + lane * 8)) };
            let y = unsafe { _mm256_loadu_ps(pb.add(i + lane * 8)) };
            *sum = term(x, y, *sum);
        }
        i += 32;
    }
    while i + 8 <= n {
        let x = unsafe { _mm256_loadu_ps(pa.add(i)) };
        let y = unsafe { _mm256_loadu_ps(pb.add(i)) };
        acc[0] = term(x, y, acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = horizontal_sum(sum);
    while i < n {
        total += if L2 {
            (a[i] - b[i]) * (a[i] - b[i])
        } else {
            a[i] * b[i]
        };
        i += 1;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm256_castps256_ps128(v);
    let high = _mm256_extractf128_ps(v, 1);
    let four = _mm_add_ps(low, high);
    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    let one = _mm_add_ss(two, _mm_shuffle_ps(two, two, 1));
    _mm_cvtss_f32(one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_agree_with_plain_sums() {
        for n in [0usize, 1, 7, 8, 31, 32, 33, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!((dot_kernel()(&a, &b) - dot).abs() < 1e-3, "dot n={n}");
            assert!((l2_kernel()(&a, &b) - l2).abs() < 1e-3, "l2 n={n}");
            assert!(
                (dot_portable(&a, &b) - dot).abs() < 1e-3,
                "portable dot n={n}"
            );
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert!((dot_avx2(&a, &b) - dot).abs() < 1e-3, "avx2 dot n={n}");
                assert!((l2_avx2(&a, &b) - l2).abs() < 1e-3, "avx2 l2 n={n}");
            }
        }
    }
}
