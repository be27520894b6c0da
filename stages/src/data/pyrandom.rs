//! CPython's `random` module, as far as `random.seed(int)` and `random.shuffle` go,
//! bit for bit (CPython 3.2 and later; `Modules/_randommodule.c` and `Lib/random.py`).
//!
//! - The generator is MT19937 (`init_genrand(19650218)` then `init_by_array`).
//! - `random.seed(n)` for an int uses `abs(n)` split into 32-bit words, least
//!   significant first (at least one word), as the `init_by_array` key.
//! - `getrandbits(k)` for `k <= 32` is `genrand_uint32() >> (32 - k)`; larger `k`
//!   fill 32-bit words least significant first, the last one shifted right.
//! - `_randbelow(n)` (`_randbelow_with_getrandbits`) draws `getrandbits(n.bit_length())`
//!   until the value is below `n`.
//! - `shuffle(x)`: `for i in reversed(range(1, len(x))): j = _randbelow(i + 1);
//!   x[i], x[j] = x[j], x[i]`.
//!
//! BIG-bench's train/validation split of a task is made with `random.seed(42)` and
//! `random.shuffle` ([`super::bigbench`]); reproducing it here lets a fresh machine
//! build LASER's exact example order from the `bigbench` package.
//!
//! [`NumpyRandomState`] is numpy's legacy `np.random.RandomState(seed)` as far as
//! `permutation` goes (BIG-bench's `default_format_fn` shuffles the choices it appends
//! to an input with it): the same MT19937, seeded with `init_genrand(seed)`, and
//! `shuffle` = `for i in reversed(range(1, n)): j = random_interval(i)`, where
//! `random_interval(max)` draws 32-bit words masked to the smallest all-ones mask
//! covering `max` until one is at most `max`.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// Python's `random.Random` state (MT19937).
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    pub(crate) fn init_genrand(s: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = s;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        PyRandom { mt, index: N }
    }

    /// `init_by_array(key)`.
    pub fn from_key(key: &[u32]) -> Self {
        let mut r = Self::init_genrand(19_650_218);
        let mt = &mut r.mt;
        let (mut i, mut j) = (1usize, 0usize);
        let len = key.len().max(1);
        for _ in 0..N.max(len) {
            let k = key.get(j).copied().unwrap_or(0);
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(k)
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= len {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        r
    }

    /// `random.seed(seed)` for a non-negative Python int that fits in 64 bits.
    pub fn seed(seed: u64) -> Self {
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        if hi == 0 {
            Self::from_key(&[lo])
        } else {
            Self::from_key(&[lo, hi])
        }
    }

    /// `genrand_uint32()`.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            let mt = &mut self.mt;
            for kk in 0..N {
                let y = (mt[kk] & UPPER_MASK) | (mt[(kk + 1) % N] & LOWER_MASK);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                mt[kk] = mt[(kk + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.random()`: 53-bit float in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.getrandbits(k)` for `k <= 64`.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits here");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let mut out = 0u64;
        let mut left = k;
        let mut shift = 0;
        while left > 0 {
            let mut r = self.next_u32();
            if left < 32 {
                r >>= 32 - left;
            }
            out |= u64::from(r) << shift;
            shift += 32;
            left = left.saturating_sub(32);
        }
        out
    }

    /// `random._randbelow(n)` for `n >= 1` (returns 0 for `n == 0`, as CPython 3.10+).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        let mut r = self.getrandbits(k);
        while r >= n {
            r = self.getrandbits(k);
        }
        r
    }

    /// `random.shuffle(xs)`.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

/// numpy's legacy `RandomState` (see the module docs).
#[derive(Clone)]
pub struct NumpyRandomState(PyRandom);

impl NumpyRandomState {
    /// `np.random.RandomState(seed=seed)` for a seed in `0..2^32`.
    pub fn seed(seed: u32) -> Self {
        NumpyRandomState(PyRandom::init_genrand(seed))
    }

    /// numpy's legacy `random_interval(max)`: uniform in `0..=max` (`max < 2^32`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let v = self.0.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `RandomState.shuffle(xs)` of a 1-d array (what `permutation` applies to a copy).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.interval(i as u32) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.random.RandomState(seed=42).permutation(np.array([c0 .. c{n-1}]))`, printed
    /// by numpy 2.4.6 for n = 1..8.
    #[test]
    fn numpy_permutation_seed_42() {
        let want: [&[usize]; 8] = [
            &[0],
            &[1, 0],
            &[0, 1, 2],
            &[1, 3, 0, 2],
            &[1, 4, 2, 0, 3],
            &[0, 1, 5, 2, 4, 3],
            &[0, 1, 5, 2, 4, 3, 6],
            &[1, 5, 0, 7, 2, 4, 3, 6],
        ];
        for (n, w) in (1..=8).zip(want) {
            let mut x: Vec<usize> = (0..n).collect();
            NumpyRandomState::seed(42).shuffle(&mut x);
            assert_eq!(x, w, "n = {n}");
        }
    }

    // Reference values printed by CPython 3.11.7.
    #[test]
    fn matches_cpython_seed_42() {
        let mut r = PyRandom::seed(42);
        assert_eq!(r.random(), 0.6394267984578837);
        assert_eq!(r.getrandbits(32), 107420369);
        assert_eq!(r.getrandbits(5), 23);
        assert_eq!(r.getrandbits(40), 267469214295);
        assert_eq!(r.getrandbits(64), 2574020394472462046);
    }

    #[test]
    fn matches_cpython_other_seeds() {
        assert_eq!(PyRandom::seed(0).getrandbits(32), 3626764237);
        assert_eq!(PyRandom::seed((1 << 40) + 7).getrandbits(32), 2635837658);
    }

    #[test]
    fn shuffle_matches_cpython() {
        let mut x: Vec<u32> = (0..10).collect();
        PyRandom::seed(42).shuffle(&mut x);
        assert_eq!(x, [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]);
        let mut x: Vec<u32> = (0..1000).collect();
        PyRandom::seed(42).shuffle(&mut x);
        assert_eq!(&x[..10], &[776, 507, 895, 922, 33, 483, 85, 750, 354, 523]);
        assert_eq!(&x[995..], &[281, 759, 25, 114, 654]);
    }
}
