//! The host's fast GEMM, with the output split across the rayon pool.
//!
//! Three backends: on CPUs with AVX-512F, a cache-blocked GEMM around our own 512-bit
//! micro-kernel (`packed`, `avx512`); on CPUs that also have AMX-BF16 (Sapphire Rapids and
//! later, under Linux), the same with a tile micro-kernel on split bfloat16 operands
//! (`amx_packed`, `amx`) for the large products; elsewhere nalgebra's f32 product (the 256-bit
//! packed kernels of `matrixmultiply`). Which kernel computes a product depends only on the
//! product (its shape, `alpha`, `beta`, how its right operand was prepared), and each output
//! element is computed entirely by one thread in the same order whatever the split, so results
//! do not depend on the thread count: training stays bit-reproducible on a given machine.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_packed;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod packed;

use lstm_core::gemm::{FixedRhsGemm, Gemm, Mat, Unprepared, check_gemm_shapes};
use nalgebra::{DMatrixView, DMatrixViewMut, Dyn};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest row piece when a product is cut into more pieces than threads.
const MIN_PIECE_ROWS: usize = 500;
/// Pieces per thread for such products.
const PIECES_PER_THREAD: usize = 4;

/// Products with fewer rows stay on the AVX-512 kernel on the AMX backend: a recurrent step
/// (20 rows) fills 20 of a tile's 32, and its columns are split between both cores, which
/// share one tile unit's throughput on this machine.
const AMX_MIN_ROWS: usize = 128;
/// Nor do products whose inner dimension or width is below these: each split operand costs a
/// packing pass that only pays back on long tiles. Same-process A/B against the AVX-512
/// backend with 64 and 32: `embedded` (D = 64) 0.80×, the `tiny` preset (D = 16) a third of
/// its speed; so models up to D = 127 train exactly as on the AVX-512 backend.
const AMX_MIN_INNER: usize = 128;
const AMX_MIN_COLS: usize = 128;

/// Whether the AMX kernel takes a product of this shape (see `AMX_MIN_ROWS`).
fn amx_shape(m: usize, n: usize, k: usize) -> bool {
    m >= AMX_MIN_ROWS && amx_operand(k, n)
}

/// Whether a right operand of `k × n` is worth packing for the AMX kernel.
fn amx_operand(k: usize, n: usize) -> bool {
    k >= AMX_MIN_INNER && n >= AMX_MIN_COLS
}

/// Below this many multiply-adds a product is not worth splitting.
pub const MIN_PARALLEL_WORK: usize = 1 << 22;

/// Steps of `k` per packed block unless [`FastGemm::with_k_block`] says otherwise.
#[cfg(target_arch = "x86_64")]
const DEFAULT_K_BLOCK: usize = packed::KC;
#[cfg(not(target_arch = "x86_64"))]
const DEFAULT_K_BLOCK: usize = 128;
/// nalgebra hands a product to `matrixmultiply` only when every dimension exceeds 5; its own
/// small-matrix loop mis-indexes strided (transposed) views, so those go to the reference
/// kernel instead, and splits never produce a piece this small.
const SMALL_DIM: usize = 5;

/// Which kernel computes the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Our cache-blocked GEMM with the AMX tile micro-kernel, each f32 operand split into two
    /// bfloat16 parts (three tile products per product: 16 of f32's 24 significand bits per
    /// operand, f32 sums). Products with `alpha ≠ 1` or `beta ∉ {0, 1}` run on [`Backend::Avx512`].
    AmxBf16x3,
    /// Our cache-blocked GEMM with the AVX-512 micro-kernel.
    Avx512,
    /// nalgebra → `matrixmultiply` (its own packed kernels: 512-bit where the CPU has them,
    /// 256-bit otherwise), available everywhere.
    Nalgebra,
}

impl Backend {
    /// The fastest backend this CPU runs, unless the environment variable `LSTM_GEMM` names
    /// another (`avx512`, `matrixmultiply`: to compare them on one machine).
    pub fn best() -> Backend {
        let asked = std::env::var("LSTM_GEMM");
        let asked = asked.as_deref().unwrap_or("");
        for backend in [Backend::AmxBf16x3, Backend::Avx512] {
            if backend.available()
                && !(asked == "matrixmultiply" || (asked == "avx512" && backend == Backend::AmxBf16x3))
            {
                return backend;
            }
        }
        Backend::Nalgebra
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        match self {
            Backend::AmxBf16x3 => return amx::Amx::detect().is_some() && avx512::Avx512::detect().is_some(),
            Backend::Avx512 => return avx512::Avx512::detect().is_some(),
            Backend::Nalgebra => {}
        }
        self == Backend::Nalgebra
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::AmxBf16x3 => "amx bf16x3 (own kernel)",
            Backend::Avx512 => "avx512 (own kernel)",
            Backend::Nalgebra => "matrixmultiply",
        }
    }
}

/// Threaded GEMM using up to `threads` rayon workers and the best backend of this CPU.
#[derive(Debug, Clone, Copy)]
pub struct FastGemm {
    threads: usize,
    backend: Backend,
    /// Steps of `k` per packed block on the AVX-512 backend.
    k_block: usize,
}

impl FastGemm {
    /// A GEMM using up to `threads` threads of the current rayon pool.
    pub fn new(threads: usize) -> FastGemm {
        FastGemm { threads: threads.max(1), backend: Backend::best(), k_block: DEFAULT_K_BLOCK }
    }

    /// The same GEMM with k-blocks of `k_block` steps on the AVX-512 backend (the sums are
    /// grouped differently, so results differ in the last bits; any fixed value is
    /// reproducible). Wider models run faster with longer blocks (see `Workspace::new`).
    pub fn with_k_block(self, k_block: usize) -> FastGemm {
        FastGemm { k_block: k_block.max(1), ..self }
    }

    /// A GEMM using every thread of the current rayon pool.
    pub fn all_threads() -> FastGemm {
        FastGemm::new(rayon::current_num_threads())
    }

    /// The same GEMM on `backend`, or `None` when this CPU cannot run it.
    pub fn with_backend(self, backend: Backend) -> Option<FastGemm> {
        backend.available().then_some(FastGemm { backend, ..self })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The AVX-512 kernel, when the backend in use is one of ours (the AMX one uses it for
    /// the products it does not take, and for the softmax passes).
    #[cfg(target_arch = "x86_64")]
    fn avx512_kernel(&self) -> Option<avx512::Avx512> {
        matches!(self.backend, Backend::Avx512 | Backend::AmxBf16x3)
            .then(|| avx512::Avx512::detect().expect("our backends are only chosen on AVX-512 CPUs"))
    }

    /// The micro-kernel for `alpha·A·B + beta·C`: AMX where the backend is AMX and the
    /// product one it takes, AVX-512 on our other backend.
    #[cfg(target_arch = "x86_64")]
    fn kernel(&self, alpha: f32, beta: f32, a: &Mat<'_>, n: usize) -> Option<Kernel> {
        let avx512 = self.avx512_kernel()?;
        let amx_product = amx_packed::handles(alpha, beta) && amx_shape(a.rows(), n, a.cols());
        if self.backend == Backend::AmxBf16x3 && amx_product {
            let amx = amx::Amx::detect().expect("Backend::AmxBf16x3 is only chosen on AMX CPUs");
            return Some(Kernel::Bf16x3(amx));
        }
        Some(Kernel::F32(avx512, self.k_block))
    }

    /// `b` packed for the AVX-512 kernel, and for the AMX one too when that is the backend
    /// and `amx` asks for it.
    #[cfg(target_arch = "x86_64")]
    fn pack(&self, b: &Mat<'_>, out: &mut Packed, f32: bool, amx: bool) {
        out.f32_for = None;
        out.bf16x3_for = None;
        if let (true, Some(avx512)) = (f32, self.avx512_kernel()) {
            out.f32.pack(&strided(b), self.k_block);
            out.f32_for = Some(avx512);
        }
        if amx && self.backend == Backend::AmxBf16x3 && amx_operand(b.rows(), b.cols()) {
            let amx = amx::Amx::detect().expect("Backend::AmxBf16x3 is only chosen on AMX CPUs");
            out.bf16x3.pack(amx, &strided(b));
            out.bf16x3_for = Some(amx);
        }
    }

    /// Prepares `b` for many single-threaded products [`FastGemm::gemm_prepared`] with many
    /// rows (the output layer's `N·T`): packs it once on our backends (for the AMX kernel on
    /// the AMX backend); nothing to do on the others.
    pub fn prepare(&self, b: Mat<'_>, out: &mut PreparedB) {
        #[cfg(target_arch = "x86_64")]
        {
            let amx = self.backend == Backend::AmxBf16x3 && amx_operand(b.rows(), b.cols());
            self.pack(&b, &mut out.packed, !amx, amx);
        }
        out.shape = (b.rows(), b.cols());
    }

    /// `C ← alpha·A·B + beta·C` on the calling thread, with `prepared` made from this same `b`
    /// by [`FastGemm::prepare`]: for callers that parallelise over blocks themselves.
    ///
    /// # Panics
    /// If the shapes differ, or `prepared` was made from a matrix of another shape.
    pub fn gemm_prepared(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, prepared: &PreparedB, beta: f32, c: &mut [f32]) {
        check_gemm_shapes(&a, &b, c.len());
        self.gemm_prepared_columns(alpha, a, b, prepared, 0..b.cols(), beta, c);
    }

    /// [`FastGemm::gemm_prepared`] restricted to columns `cols` of `b` (starting at a multiple
    /// of [`FastGemm::COLUMN_ALIGN`]): `c` is `a.rows() × cols.len()`, and each of its elements
    /// gets the same bits as in the whole product. Lets a caller walk a wide `b` a slice at a
    /// time and reduce each slice of `C` while it is still in cache.
    ///
    /// # Panics
    /// If the shapes differ, `cols` is not inside `b` or starts off the alignment, or
    /// `prepared` was made from a matrix of another shape.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_prepared_columns(
        &self,
        alpha: f32,
        a: Mat<'_>,
        b: Mat<'_>,
        prepared: &PreparedB,
        cols: Range<usize>,
        beta: f32,
        c: &mut [f32],
    ) {
        assert!(
            a.cols() == b.rows() && cols.start <= cols.end && cols.end <= b.cols(),
            "gemm: columns outside the operand"
        );
        assert!(cols.start.is_multiple_of(Self::COLUMN_ALIGN), "gemm: column range off the alignment");
        assert_eq!(c.len(), a.rows() * cols.len(), "gemm: output has the wrong length");
        assert_eq!(prepared.shape, (b.rows(), b.cols()), "gemm: prepared operand has another shape");
        if a.rows() == 0 || cols.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = self.kernel(alpha, beta, &a, cols.len()) {
            let (kernel, rhs) = prepared.packed.rhs(kernel, alpha, beta, &b, cols);
            return leaf(kernel, alpha, strided(&a), rhs, beta, c);
        }
        let (m, w) = (a.rows(), cols.len());
        if m <= SMALL_DIM || w <= SMALL_DIM || a.cols() <= SMALL_DIM {
            // nalgebra's small-matrix loop mis-indexes strided views (see `SMALL_DIM`).
            return lstm_core::gemm::naive_gemm_columns(alpha, a, b, cols, beta, c);
        }
        if beta == 0.0 {
            c.fill(0.0);
        }
        let mut cv: ViewMut<'_> = DMatrixViewMut::from_slice_with_strides_mut(c, m, w, w, 1);
        cv.gemm(alpha, &view(&a), &view(&b).columns_range(cols), beta);
    }

    /// The softmax row passes to use beside this GEMM: 16-lane AVX-512 versions on the
    /// AVX-512 backend, the portable reference elsewhere. The same bits either way.
    pub fn softmax_passes(&self) -> SoftmaxPasses {
        SoftmaxPasses {
            #[cfg(target_arch = "x86_64")]
            kernel: self.avx512_kernel(),
        }
    }

    /// What the first column of [`FastGemm::gemm_prepared_columns`] must be a multiple of (the
    /// micro-kernel's tile width; asked of every backend, so callers do not depend on it).
    pub const COLUMN_ALIGN: usize = 32;
}

/// The three row passes of the training softmax (`lstm_core::softmax::BiasedRowPasses`) for
/// the backend in use: on AVX-512 the compiler's own vectorisation of the reference keeps to
/// 256-bit vectors, and the same operations 16 lanes at a time ran the softmax 11–17% faster
/// (one thread, 700 × 10,000 scores), bit for bit the reference.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxPasses {
    #[cfg(target_arch = "x86_64")]
    kernel: Option<avx512::Avx512>,
}

impl lstm_core::softmax::BiasedRowPasses for SoftmaxPasses {
    fn max_of_sums(&self, a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = self.kernel {
            return k.max_of_sums(a, b);
        }
        lstm_core::exp::max_of_sums(a, b)
    }

    fn exp_of_sums_shifted_sum(&self, values: &mut [f32], offsets: &[f32], shift: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = self.kernel {
            return k.exp_of_sums_shifted_sum(values, offsets, shift);
        }
        lstm_core::exp::exp_of_sums_shifted_sum(values, offsets, shift)
    }

    fn scale_and_accumulate(&self, values: &mut [f32], k: f32, totals: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = self.kernel {
            return kernel.scale_and_accumulate(values, k, totals);
        }
        lstm_core::exp::scale_and_accumulate(values, k, totals);
    }
}

#[cfg(target_arch = "x86_64")]
const _: () = assert!(FastGemm::COLUMN_ALIGN.is_multiple_of(avx512::NR));

/// An operand prepared once by [`FastGemm::prepare`] for many products.
#[derive(Debug, Default)]
pub struct PreparedB {
    #[cfg(target_arch = "x86_64")]
    packed: Packed,
    shape: (usize, usize),
}

type View<'a> = DMatrixView<'a, f32, Dyn, Dyn>;
type ViewMut<'a> = DMatrixViewMut<'a, f32, Dyn, Dyn>;

/// nalgebra view of a row-major matrix (strides: one row down = `cols`, one column right = 1).
fn view<'a>(m: &Mat<'a>) -> View<'a> {
    let (rs, cs) = if m.is_transposed() { (1, m.rows()) } else { (m.cols(), 1) };
    DMatrixView::from_slice_with_strides(m.data(), m.rows(), m.cols(), rs, cs)
}

fn split_gemm(alpha: f32, a: View<'_>, b: View<'_>, beta: f32, mut c: ViewMut<'_>, threads: usize) {
    let (m, n, k) = (a.nrows(), b.ncols(), a.ncols());
    let splittable =
        |len: usize| len * (threads / 2) / threads > SMALL_DIM && len - len * (threads / 2) / threads > SMALL_DIM;
    if threads <= 1 || m * n * k < MIN_PARALLEL_WORK || !(splittable(m) || splittable(n)) {
        c.gemm(alpha, &a, &b, beta);
        return;
    }
    let (t1, t2) = (threads / 2, threads - threads / 2);
    // Measured (crates/trainer: `host bench train`, shapes of the presets): with a short inner
    // dimension the row split wins (for h·Eᵀ, 700×10000×64, by ~30%: each half packs its own
    // rows of A and streams B once), otherwise splitting the larger side does.
    let rows_first = m >= 128 && k <= 256;
    if splittable(m) && (rows_first || m >= n || !splittable(n)) {
        let mid = m * t1 / threads;
        let (c1, c2) = c.rows_range_pair_mut(0..mid, mid..);
        let (a1, a2) = (a.rows_range(0..mid), a.rows_range(mid..));
        rayon::join(|| split_gemm(alpha, a1, b, beta, c1, t1), || split_gemm(alpha, a2, b, beta, c2, t2));
    } else {
        let mid = n * t1 / threads;
        let (c1, c2) = c.columns_range_pair_mut(0..mid, mid..);
        let (b1, b2) = (b.columns_range(0..mid), b.columns_range(mid..));
        rayon::join(|| split_gemm(alpha, a, b1, beta, c1, t1), || split_gemm(alpha, a, b2, beta, c2, t2));
    }
}

/// Which micro-kernel computes a product.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// AVX-512 f32, with k-blocks of this many steps.
    F32(avx512::Avx512, usize),
    /// AMX bf16x3 (`alpha = 1`, `beta` 0 or 1).
    Bf16x3(amx::Amx),
}

#[cfg(target_arch = "x86_64")]
impl Kernel {
    /// Rows and columns of `C` per tile.
    fn tile(self) -> (usize, usize) {
        match self {
            Kernel::F32(..) => (avx512::MR, avx512::NR),
            Kernel::Bf16x3(_) => (amx::MR, amx::NR),
        }
    }
}

/// A right operand packed once, for the AVX-512 kernel, the AMX one or both (each with the
/// proof that the CPU runs it). The buffers stay allocated between packings.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Default)]
struct Packed {
    f32: packed::PackedB,
    f32_for: Option<avx512::Avx512>,
    bf16x3: amx_packed::PackedB,
    bf16x3_for: Option<amx::Amx>,
}

#[cfg(target_arch = "x86_64")]
impl Packed {
    /// The kernel and right operand for a product that would use `preferred`: its own packing
    /// when there is one, else the other packing's kernel (so that an operand packed for one
    /// kernel is not packed again on every product), else `b` itself. The choice depends on
    /// the call alone, never on the threads.
    fn rhs<'a>(
        &'a self,
        preferred: Kernel,
        alpha: f32,
        beta: f32,
        b: &Mat<'a>,
        cols: Range<usize>,
    ) -> (Kernel, Rhs<'a>) {
        let avx512_kernel = |k| match preferred {
            Kernel::F32(_, k_block) => Kernel::F32(k, k_block),
            Kernel::Bf16x3(_) => Kernel::F32(k, DEFAULT_K_BLOCK),
        };
        match (preferred, self.f32_for, self.bf16x3_for) {
            (Kernel::Bf16x3(_), _, Some(amx)) => (Kernel::Bf16x3(amx), Rhs::Bf16x3(&self.bf16x3, cols)),
            (_, Some(k), _) => (avx512_kernel(k), Rhs::F32(&self.f32, cols)),
            (_, None, Some(amx)) if amx_packed::handles(alpha, beta) => {
                (Kernel::Bf16x3(amx), Rhs::Bf16x3(&self.bf16x3, cols))
            }
            _ => (preferred, Rhs::Plain(strided(b).cols_range(cols))),
        }
    }
}

/// The right operand of a threaded product: a matrix, or columns `cols` of one packed in advance.
#[cfg(target_arch = "x86_64")]
#[derive(Clone)]
enum Rhs<'a> {
    Plain(packed::Strided<'a>),
    F32(&'a packed::PackedB, std::ops::Range<usize>),
    Bf16x3(&'a amx_packed::PackedB, std::ops::Range<usize>),
}

#[cfg(target_arch = "x86_64")]
impl Rhs<'_> {
    fn cols(&self) -> usize {
        match self {
            Rhs::Plain(b) => b.cols,
            Rhs::F32(_, cols) | Rhs::Bf16x3(_, cols) => cols.len(),
        }
    }

    /// Columns `..mid` and `mid..` (`mid` a multiple of the tile width).
    fn split_columns(&self, mid: usize) -> (Self, Self) {
        let at = |cols: &Range<usize>| (cols.start..cols.start + mid, cols.start + mid..cols.end);
        match self {
            Rhs::Plain(b) => (Rhs::Plain(b.cols_range(0..mid)), Rhs::Plain(b.cols_range(mid..b.cols))),
            Rhs::F32(p, cols) => {
                let (l, r) = at(cols);
                (Rhs::F32(p, l), Rhs::F32(p, r))
            }
            Rhs::Bf16x3(p, cols) => {
                let (l, r) = at(cols);
                (Rhs::Bf16x3(p, l), Rhs::Bf16x3(p, r))
            }
        }
    }
}

/// Splits `C` across `threads` rayon workers, each running the packed single-thread GEMM: by
/// rows (at a multiple of the tile height), or, for a product with few rows (a recurrent step:
/// 20 × 4H), by columns, so each worker streams only its half of `B` instead of all of it.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn split_packed(
    kernel: Kernel,
    alpha: f32,
    a: packed::Strided<'_>,
    b: Rhs<'_>,
    beta: f32,
    c: &mut [f32],
    threads: usize,
) {
    let (m, n, k) = (a.rows, b.cols(), a.cols);
    let (mr, nr) = kernel.tile();
    let (row_panels, col_panels) = (m.div_ceil(mr), n.div_ceil(nr));
    let by_columns = row_panels < 4 && col_panels >= 2;
    if threads <= 1 || m * n * k < MIN_PARALLEL_WORK || (row_panels < 2 && !by_columns) {
        return leaf(kernel, alpha, a, b, beta, c);
    }
    let (t1, t2) = (threads / 2, threads - threads / 2);
    if by_columns {
        let mid = (col_panels * t1 / threads).max(1) * nr;
        let (b1, b2) = b.split_columns(mid);
        split_columns(c, m, n, mid, beta, |left, right| {
            rayon::join(
                || split_packed(kernel, alpha, a, b1, beta, left, t1),
                || split_packed(kernel, alpha, a, b2, beta, right, t2),
            );
        });
        return;
    }
    // Many rows (dE += dYᵀ·h: 10,000): pieces of at least `MIN_PIECE_ROWS`, a few per
    // thread, so a thread that comes late (from the LSTM backward running beside it) finds
    // work left instead of one half to wait for (same-process A/B: `small` +4–6%, `embedded`
    // +1–5%, `book` +0.5%). Each piece packs its own `B`, cheap next to 500+ rows of work.
    let pieces = (m / MIN_PIECE_ROWS).min(threads * PIECES_PER_THREAD);
    if pieces > threads {
        use rayon::prelude::*;
        let piece_rows = m.div_ceil(pieces).div_ceil(mr) * mr;
        c.par_chunks_mut(piece_rows * n).enumerate().for_each(|(q, c)| {
            let rows = q * piece_rows..m.min((q + 1) * piece_rows);
            split_packed(kernel, alpha, a.rows_range(rows), b.clone(), beta, c, 1);
        });
        return;
    }
    let mid = (row_panels * t1 / threads).max(1) * mr;
    let (c1, c2) = c.split_at_mut(mid * n);
    let (a1, a2) = (a.rows_range(0..mid), a.rows_range(mid..m));
    let b2 = b.clone();
    rayon::join(
        || split_packed(kernel, alpha, a1, b, beta, c1, t1),
        || split_packed(kernel, alpha, a2, b2, beta, c2, t2),
    );
}

/// One thread's product. `b` packed for `kernel` (callers see to it; see `FastGemm::kernel`).
#[cfg(target_arch = "x86_64")]
fn leaf(kernel: Kernel, alpha: f32, a: packed::Strided<'_>, b: Rhs<'_>, beta: f32, c: &mut [f32]) {
    match (kernel, b) {
        (Kernel::F32(avx512, k_block), Rhs::Plain(b)) => packed::gemm(avx512, k_block, alpha, a, b, beta, c),
        (Kernel::Bf16x3(amx), Rhs::Plain(b)) => amx_packed::gemm(amx, a, b, beta, c),
        (Kernel::F32(avx512, _), Rhs::F32(p, cols)) => packed::gemm_prepacked(avx512, alpha, a, p, cols, beta, c),
        (Kernel::Bf16x3(amx), Rhs::Bf16x3(p, cols)) => amx_packed::gemm_prepacked(amx, a, p, cols, beta, c),
        _ => unreachable!("a packed operand meets the kernel it was packed for (see `Packed::rhs`)"),
    }
}

thread_local! {
    /// Column halves of `C` for [`split_columns`], kept between calls.
    static COLUMN_HALVES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `work` on contiguous copies of columns `..mid` and `mid..` of the row-major `m × n`
/// matrix `c` (copied in unless `beta == 0`, then copied back). Each element is computed
/// exactly as in place: the kernel's result does not depend on where a tile sits.
#[cfg(target_arch = "x86_64")]
fn split_columns(c: &mut [f32], m: usize, n: usize, mid: usize, beta: f32, work: impl FnOnce(&mut [f32], &mut [f32])) {
    // Taken out rather than borrowed: a nested split on this thread finds an empty buffer.
    let mut buf = COLUMN_HALVES.with_borrow_mut(std::mem::take);
    buf.resize(m * n, 0.0);
    let (left, right) = buf.split_at_mut(m * mid);
    let w = n - mid;
    if beta != 0.0 {
        for (r, row) in c.chunks_exact(n).enumerate() {
            left[r * mid..(r + 1) * mid].copy_from_slice(&row[..mid]);
            right[r * w..(r + 1) * w].copy_from_slice(&row[mid..]);
        }
    }
    work(left, right);
    for (r, row) in c.chunks_exact_mut(n).enumerate() {
        row[..mid].copy_from_slice(&left[r * mid..(r + 1) * mid]);
        row[mid..].copy_from_slice(&right[r * w..(r + 1) * w]);
    }
    COLUMN_HALVES.with_borrow_mut(|slot| *slot = buf);
}

#[cfg(target_arch = "x86_64")]
fn strided<'a>(m: &Mat<'a>) -> packed::Strided<'a> {
    let (rs, cs) = if m.is_transposed() { (1, m.rows()) } else { (m.cols(), 1) };
    packed::Strided { data: m.data(), rows: m.rows(), cols: m.cols(), rs, cs }
}

/// Products with a right operand packed once ([`Gemm::with_rhs`] and prepared operands on our
/// backends).
#[cfg(target_arch = "x86_64")]
struct PackedRhs<'a> {
    gemm: FastGemm,
    b: Mat<'a>,
    packed: &'a Packed,
}

#[cfg(target_arch = "x86_64")]
impl FixedRhsGemm for PackedRhs<'_> {
    fn gemm(&self, alpha: f32, a: Mat<'_>, beta: f32, c: &mut [f32]) {
        check_gemm_shapes(&a, &self.b, c.len());
        let preferred = self.gemm.kernel(alpha, beta, &a, self.b.cols()).expect("packed only on our backends");
        let (kernel, rhs) = self.packed.rhs(preferred, alpha, beta, &self.b, 0..self.b.cols());
        split_packed(kernel, alpha, strided(&a), rhs, beta, c, self.gemm.threads);
    }
}

thread_local! {
    /// The packed right operand of [`Gemm::with_rhs`], kept between calls.
    #[cfg(target_arch = "x86_64")]
    static RHS_PACK: std::cell::RefCell<Packed> = std::cell::RefCell::new(Packed::default());
}

/// Right operands packed once for many products, each recognised again by identity (the same
/// slice, shape and transposition): an evaluation's LSTM weights, which stay fixed while it
/// borrows the parameters, instead of being packed again for every batch.
#[derive(Debug, Default)]
pub struct PreparedOperands {
    entries: Vec<(OperandKey, PreparedB)>,
    /// Products that read a packed copy since [`FastGemm::prepare_all`].
    hits: AtomicUsize,
}

impl PreparedOperands {
    /// How many products have read one of the packed copies since they were made: a check
    /// that the operands are still recognised (a caller forming its matrices differently
    /// would silently fall back to packing on the fly, correct but slower).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

/// What identifies an operand: where its elements are and how they are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OperandKey {
    addr: usize,
    len: usize,
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl OperandKey {
    fn of(m: &Mat<'_>) -> OperandKey {
        let data = m.data();
        OperandKey {
            addr: data.as_ptr() as usize,
            len: data.len(),
            rows: m.rows(),
            cols: m.cols(),
            transposed: m.is_transposed(),
        }
    }
}

impl FastGemm {
    /// Packs each of `operands` into `set` (reusing its buffers) for [`FastGemm::with_prepared`].
    pub fn prepare_all(&self, operands: &[Mat<'_>], set: &mut PreparedOperands) {
        set.entries.resize_with(operands.len(), Default::default);
        set.hits.store(0, Ordering::Relaxed);
        for (m, (key, prepared)) in operands.iter().zip(&mut set.entries) {
            *key = OperandKey::of(m);
            // Evaluation multiplies these by a step's few rows and by all of a batch's: both
            // kernels' packings (only the AVX-512 one off the AMX backend).
            #[cfg(target_arch = "x86_64")]
            self.pack(m, &mut prepared.packed, true, true);
            prepared.shape = (m.rows(), m.cols());
        }
    }

    /// This GEMM, reading any right operand found in `set` from its packed copy. The caller
    /// keeps the operands unchanged while it is used (an immutable borrow does).
    pub fn with_prepared<'a>(&self, set: &'a PreparedOperands) -> PreparedGemm<'a> {
        PreparedGemm { gemm: *self, set }
    }
}

/// [`FastGemm`] with some right operands packed in advance (see [`FastGemm::with_prepared`]);
/// the same bits as packing them on the fly.
#[derive(Debug, Clone, Copy)]
pub struct PreparedGemm<'a> {
    gemm: FastGemm,
    set: &'a PreparedOperands,
}

impl PreparedGemm<'_> {
    /// The packed copy of `b`, when there is one the backend can use.
    #[cfg(target_arch = "x86_64")]
    fn packed_rhs<'b>(&'b self, b: Mat<'b>) -> Option<PackedRhs<'b>> {
        self.gemm.avx512_kernel()?;
        let key = OperandKey::of(&b);
        let (_, prepared) = self.set.entries.iter().find(|(k, _)| *k == key)?;
        self.set.hits.fetch_add(1, Ordering::Relaxed);
        Some(PackedRhs { gemm: self.gemm, b, packed: &prepared.packed })
    }
}

impl Gemm for PreparedGemm<'_> {
    fn gemm(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(rhs) = self.packed_rhs(b) {
            return rhs.gemm(alpha, a, beta, c);
        }
        self.gemm.gemm(alpha, a, b, beta, c);
    }

    fn with_rhs<R>(&self, b: Mat<'_>, body: impl FnOnce(&dyn FixedRhsGemm) -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        if let Some(rhs) = self.packed_rhs(b) {
            return body(&rhs);
        }
        self.gemm.with_rhs(b, body)
    }
}

impl Gemm for FastGemm {
    fn with_rhs<R>(&self, b: Mat<'_>, body: impl FnOnce(&dyn FixedRhsGemm) -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        if self.avx512_kernel().is_some() {
            // Taken out rather than borrowed, so a nested call packs into a fresh buffer.
            let mut packed = RHS_PACK.with_borrow_mut(std::mem::take);
            // lstm-core's per-step products (20 rows of a batch): the AVX-512 kernel's.
            self.pack(&b, &mut packed, true, false);
            let result = body(&PackedRhs { gemm: *self, b, packed: &packed });
            RHS_PACK.with_borrow_mut(|slot| *slot = packed);
            return result;
        }
        body(&Unprepared { gemm: self, b })
    }

    fn gemm(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
        check_gemm_shapes(&a, &b, c.len());
        let (m, n) = (a.rows(), b.cols());
        if m == 0 || n == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = self.kernel(alpha, beta, &a, n) {
            split_packed(kernel, alpha, strided(&a), Rhs::Plain(strided(&b)), beta, c, self.threads);
            return;
        }
        if m <= SMALL_DIM || n <= SMALL_DIM || a.cols() <= SMALL_DIM {
            lstm_core::NaiveGemm.gemm(alpha, a, b, beta, c);
            return;
        }
        if beta == 0.0 {
            // Never let NaN or garbage in C leak through 0·C.
            c.fill(0.0);
        }
        let cv: ViewMut<'_> = DMatrixViewMut::from_slice_with_strides_mut(c, m, n, n, 1);
        split_gemm(alpha, view(&a), view(&b), beta, cv, self.threads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lstm_core::{NaiveGemm, Rng};

    #[test]
    fn matches_the_reference_for_every_transposition_and_split() {
        let mut rng = Rng::new(9);
        // Shapes straddling every tile and block edge of the packed backend (MR 10, NR 32,
        // k-blocks 128 and 256, MC 300, NC 2048, groups of 16 `B` panels at 256 steps: 650
        // columns are two groups) as well as the tiny ones.
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (70, 9, 64),
            (64, 300, 65),
            (257, 129, 33),
            (20, 256, 64),
            (311, 2081, 20),
            (31, 33, 600),
            (45, 250, 300),
            // `A` read in place across 21 panels of `B` and two k-blocks (`book`'s dh = dY·E).
            (23, 650, 300),
            // Cut into more row pieces than threads (4 threads below).
            (2600, 40, 60),
        ];
        for (backend, k_block) in [(Backend::Avx512, 128), (Backend::Avx512, 256), (Backend::Nalgebra, 128)] {
            let Some(fast) = FastGemm::new(1).with_backend(backend).map(|g| g.with_k_block(k_block)) else {
                eprintln!("{backend:?} not available on this CPU: skipped");
                continue;
            };
            let many_threads = FastGemm::new(4).with_backend(backend).expect("available").with_k_block(k_block);
            for &(m, n, k) in &shapes {
                let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let (am, bm) = (mat(&a, m, k, ta), mat(&b, k, n, tb));
                    let mut want = c0.clone();
                    NaiveGemm.gemm(0.5, am, bm, 0.25, &mut want);
                    let mut one = c0.clone();
                    fast.gemm(0.5, am, bm, 0.25, &mut one);
                    let mut many = c0.clone();
                    many_threads.gemm(0.5, am, bm, 0.25, &mut many);
                    let tol = 1e-5 * (k as f32).sqrt() * 8.0;
                    for (w, o) in want.iter().zip(&one) {
                        assert!(
                            (w - o).abs() <= tol * (1.0 + w.abs()),
                            "{backend:?} {m}x{n}x{k} {ta} {tb}: {w} vs {o}"
                        );
                    }
                    assert_eq!(one, many, "{backend:?}: result depends on the thread split");
                }
            }
        }
    }

    /// `rows × cols`, stored as such or (`transposed`) as the transpose of a row-major `cols × rows`.
    fn mat(v: &[f32], rows: usize, cols: usize, transposed: bool) -> Mat<'_> {
        if transposed { Mat::new(v, cols, rows).t() } else { Mat::new(v, rows, cols) }
    }

    /// The AMX backend: products it takes (`alpha` 1, `beta` 0 or 1, at least 128 rows, 128
    /// deep and 128 wide) within bf16x3's error of the reference (16 significand bits per
    /// operand: a few 2⁻¹⁷ of Σ|a·b|), the same bits on 1 and 4 threads and through a prepared
    /// operand; the others are the AVX-512 backend's, bit for bit.
    #[test]
    fn amx_backend_matches_the_reference_within_bf16x3_error() {
        let Some(fast) = FastGemm::new(1).with_backend(Backend::AmxBf16x3) else {
            eprintln!("no AMX on this CPU: skipped");
            return;
        };
        let many_threads = FastGemm::new(4).with_backend(Backend::AmxBf16x3).expect("available");
        let avx512 = FastGemm::new(1).with_backend(Backend::Avx512).expect("AMX CPUs have AVX-512");
        let mut rng = Rng::new(17);
        // Partial tiles, steps and k-blocks; one cut into row pieces on 4 threads; three shapes
        // the AVX-512 kernel keeps (too few rows, too short, too narrow).
        let shapes = [
            (128, 128, 128),
            (130, 650, 300),
            (300, 160, 1100),
            (700, 129, 131),
            (1300, 140, 300),
            (20, 256, 128),
            (300, 200, 64),
            (300, 64, 300),
        ];
        for &(m, n, k) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
            let abs_a: Vec<f32> = a.iter().map(|x| x.abs()).collect();
            let abs_b: Vec<f32> = b.iter().map(|x| x.abs()).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (am, bm) = (mat(&a, m, k, ta), mat(&b, k, n, tb));
                let mut scale = vec![0.0; m * n];
                NaiveGemm.gemm(1.0, mat(&abs_a, m, k, ta), mat(&abs_b, k, n, tb), 0.0, &mut scale);
                for beta in [0.0, 1.0] {
                    let mut want = c0.clone();
                    NaiveGemm.gemm(1.0, am, bm, beta, &mut want);
                    let mut one = c0.clone();
                    fast.gemm(1.0, am, bm, beta, &mut one);
                    for ((w, o), s) in want.iter().zip(&one).zip(&scale) {
                        assert!((w - o).abs() <= 4e-5 * s + 1e-5, "{m}x{n}x{k} {ta} {tb} beta {beta}: {w} vs {o}");
                    }
                    let mut many = c0.clone();
                    many_threads.gemm(1.0, am, bm, beta, &mut many);
                    assert!(one == many, "{m}x{n}x{k}: result depends on the thread split");
                    if !amx_shape(m, n, k) {
                        let mut f32_side = c0.clone();
                        avx512.gemm(1.0, am, bm, beta, &mut f32_side);
                        assert!(one == f32_side, "{m}x{n}x{k}: few rows stay on the AVX-512 kernel");
                        continue;
                    }
                    let mut prepared = PreparedB::default();
                    fast.prepare(bm, &mut prepared);
                    let mut again = c0.clone();
                    fast.gemm_prepared(1.0, am, bm, &prepared, beta, &mut again);
                    assert!(one == again, "{m}x{n}x{k}: prepared operand");
                }
                // Products left to the AVX-512 kernel.
                let (mut amx_side, mut f32_side) = (c0.clone(), c0.clone());
                fast.gemm(0.5, am, bm, 0.25, &mut amx_side);
                avx512.gemm(0.5, am, bm, 0.25, &mut f32_side);
                assert!(amx_side == f32_side, "{m}x{n}x{k}: alpha 0.5, beta 0.25");
            }
        }
    }

    #[test]
    fn fixed_rhs_products_equal_plain_ones_bit_for_bit() {
        let mut rng = Rng::new(4);
        // Recurrent-step shapes (few rows: column split), a tall one (row split), odd edges.
        for &(m, n, k) in &[(20, 256, 64), (20, 2600, 130), (10, 650, 260), (45, 333, 70), (300, 100, 40), (1, 5, 3)] {
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
            let a_steps: Vec<Vec<f32>> = (0..3).map(|_| (0..m * k).map(|_| rng.normal()).collect()).collect();
            for (backend, k_block) in [(Backend::Avx512, 128), (Backend::Avx512, 256), (Backend::Nalgebra, 128)] {
                for threads in [1, 2, 3] {
                    let Some(fast) = FastGemm::new(threads).with_backend(backend) else { continue };
                    let fast = fast.with_k_block(k_block);
                    let bm = Mat::new(&b, k, n);
                    let mut plain = c0.clone();
                    for (i, a) in a_steps.iter().enumerate() {
                        let beta = if i == 1 { 0.0 } else { 1.0 };
                        fast.gemm(1.0, Mat::new(a, m, k), bm, beta, &mut plain);
                    }
                    let mut fixed = c0.clone();
                    fast.with_rhs(bm, |rhs| {
                        for (i, a) in a_steps.iter().enumerate() {
                            let beta = if i == 1 { 0.0 } else { 1.0 };
                            rhs.gemm(1.0, Mat::new(a, m, k), beta, &mut fixed);
                        }
                    });
                    assert_eq!(plain, fixed, "{backend:?} {threads} threads {m}x{n}x{k}");
                }
            }
        }
    }

    /// Operands found in a prepared set give the same bits as packing on the fly, in plain
    /// products (threaded) and through `with_rhs`; others fall through to the plain GEMM.
    #[test]
    fn prepared_operands_equal_plain_products_bit_for_bit() {
        let mut rng = Rng::new(21);
        let (m, n, k) = (350, 300, 130);
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let other: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let fast = FastGemm::new(2).with_k_block(64);
            let (am, bm) = (Mat::new(&a, m, k), Mat::new(&b, k, n));
            let bt = Mat::new(&b, n, k).t();
            let mut set = PreparedOperands::default();
            fast.prepare_all(&[bm, bt], &mut set);
            #[cfg(target_arch = "x86_64")]
            if fast.backend() == Backend::Avx512 {
                let prepared = fast.with_prepared(&set);
                // Found by identity: same slice, shape and transposition.
                assert!(prepared.packed_rhs(bm).is_some() && prepared.packed_rhs(bt).is_some());
                assert!(prepared.packed_rhs(Mat::new(&other, k, n)).is_none());
                assert!(prepared.packed_rhs(Mat::new(&b, n, k)).is_none());
                assert!(prepared.packed_rhs(Mat::new(&b[..k * (n - 1)], k, n - 1)).is_none());
                assert_eq!(set.hits(), 2, "only the two found count");
                fast.prepare_all(&[bm, bt], &mut set);
                assert_eq!(set.hits(), 0, "packing again starts the count afresh");
            }
            let prepared = fast.with_prepared(&set);
            let at = Mat::new(&a[..n * k], n, k);
            for (lhs, rhs) in [(am, bm), (at, bt), (am, Mat::new(&other, k, n))] {
                let mut want = c0[..lhs.rows() * rhs.cols()].to_vec();
                fast.gemm(0.5, lhs, rhs, 0.25, &mut want);
                let mut got = c0[..lhs.rows() * rhs.cols()].to_vec();
                prepared.gemm(0.5, lhs, rhs, 0.25, &mut got);
                assert_eq!(want, got);
                let mut fixed = c0[..lhs.rows() * rhs.cols()].to_vec();
                prepared.with_rhs(rhs, |g| g.gemm(0.5, lhs, 0.25, &mut fixed));
                assert_eq!(want, fixed);
            }
        });
    }

    /// A slice of a prepared operand's columns gives exactly those columns of the whole
    /// product (both backends; transposed and plain `B`, a partial last slice, in-place and
    /// packed `A`).
    #[test]
    fn prepared_column_slices_equal_the_whole_product() {
        let mut rng = Rng::new(8);
        for &(m, n, k) in &[(23, 200, 70), (350, 1100, 136), (3, 40, 2)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            for backend in [Backend::Avx512, Backend::Nalgebra] {
                let Some(fast) = FastGemm::new(1).with_backend(backend) else { continue };
                for bm in [Mat::new(&b, k, n), Mat::new(&b, n, k).t()] {
                    let am = Mat::new(&a, m, k);
                    let mut prepared = PreparedB::default();
                    fast.prepare(bm, &mut prepared);
                    let mut whole = vec![0.0; m * n];
                    fast.gemm_prepared(1.0, am, bm, &prepared, 0.0, &mut whole);
                    for width in [FastGemm::COLUMN_ALIGN, 3 * FastGemm::COLUMN_ALIGN, 512] {
                        for start in (0..n).step_by(width) {
                            let cols = start..n.min(start + width);
                            let mut slice = vec![f32::NAN; m * cols.len()];
                            fast.gemm_prepared_columns(1.0, am, bm, &prepared, cols.clone(), 0.0, &mut slice);
                            for (r, row) in slice.chunks_exact(cols.len()).enumerate() {
                                assert_eq!(
                                    row,
                                    &whole[r * n + cols.start..r * n + cols.end],
                                    "{backend:?} {m}x{n}x{k} {cols:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "off the alignment")]
    fn column_slices_off_the_alignment_are_refused() {
        let b = vec![1.0; 4 * 64];
        let (bm, fast) = (Mat::new(&b, 4, 64), FastGemm::new(1));
        let mut prepared = PreparedB::default();
        fast.prepare(bm, &mut prepared);
        let mut c = vec![0.0; 8];
        fast.gemm_prepared_columns(1.0, Mat::new(&[1.0; 4], 1, 4), bm, &prepared, 8..16, 0.0, &mut c);
    }

    #[test]
    fn beta_zero_ignores_nan_in_output() {
        for backend in [Backend::Avx512, Backend::Nalgebra] {
            let Some(fast) = FastGemm::new(2).with_backend(backend) else { continue };
            let mut c = [f32::NAN; 4];
            fast.gemm(1.0, Mat::new(&[1.0, 2.0], 2, 1), Mat::new(&[3.0, 4.0], 1, 2), 0.0, &mut c);
            assert_eq!(c, [3.0, 4.0, 6.0, 8.0], "{backend:?}");
            // A large product too (full tiles, several k-blocks).
            let (m, n, k) = (40, 64, 300);
            let a = vec![1.0f32; m * k];
            let b = vec![0.5f32; k * n];
            let mut big = vec![f32::NAN; m * n];
            fast.gemm(1.0, Mat::new(&a, m, k), Mat::new(&b, k, n), 0.0, &mut big);
            assert!(big.iter().all(|&v| v == 150.0), "{backend:?}");
        }
    }
}
