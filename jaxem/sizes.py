"""Size thresholds below which the engine writes a computation out element by element.

All were measured on XLA:CPU (jaxlib 0.10, the 2-core benchmark machine; cases in
benchmarks/bench_gmm.py and bench_batch.py). Below them XLA:CPU's per-call overhead (a
LAPACK call per matrix, a small GEMM contracting two minor axes, a reduction over a short
axis fused with its producer) costs more than the arithmetic. They change no result beyond
rounding; on other backends they are unmeasured.
"""

# Mixture components handled as separate slices combined by elementwise ops, rather than
# by reductions over the component axis (models.mixture.weighted_posterior, the Gaussian
# moments): a softmax VJP over (21, 3, 5000) ran 1.67 ms reduced, 0.19 ms sliced; the
# moments of 200 problems (K = 2, 6 features, N = 400) 324 us as a GEMM, 159 us sliced.
UNROLL_COMPONENTS = 8

# Features (or centers) up to which squared distances are sums of per-feature slices and
# the nearest center a chain of comparisons (jaxem.init): 200 k-means++ starts of N = 400,
# D = 2, K = 2 took 0.70 ms reduced, 0.13 ms unrolled.
UNROLL_AXIS = 8

# Features up to which full-covariance Gaussian features are built one row pair at a
# time (above, as one gather of row pairs).
PAIRWISE_MAX_FEATURES = 8

# Features up to which precision Cholesky factors come from scalar formulas per entry
# rather than LAPACK calls: 32 matrices of 2 x 2, 3.3 -> 0.7 us per step; 8 x 8, 17 -> 6 us.
SCALAR_CHOLESKY_MAX_FEATURES = 8

# Features up to which the missing-value E-step (models.conditional_gaussian) forms the
# products P y and the scatter of the solved block onto the missing columns as sums of
# broadcast slices rather than small batched contractions: 4128 rows, K = 4, D = 5, W = 4,
# float32: P y 0.57 -> 0.26 ms, the scatter 2.7 -> 0.20 ms; and, in float32, the per-row
# quadratics of width_e_step as sums of slices (conditional_gaussian._inner: D = 16 fit
# 71 -> 48 ms per iteration).
MISSING_UNROLL_FEATURES = 16

# Message entries per scan step (sequences x states x restarts vmapped together) from which
# the scaled HMM forward-backward (models.hmm_inference) multiplies by the transition
# matrix with dot_generals rather than fused broadcast-reduce loops. E-step of the
# bench_hmm problem (50 sequences of 1000 steps, K = 8, D = 4, float32), CPU time: one
# restart (400 entries) is faster fused (5.1 vs 6.2 ms forward-backward); 16 vmapped
# restarts (6400) take 273 ms fused, 168 ms with dots; 200 sequences (1600), backward
# pass alone, 15.4 ms fused, 6.8 ms with dots.
HMM_DOT_MIN_MESSAGES = 1024
