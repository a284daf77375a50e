"""The Ising stack of the Denoising Thermodynamic Model, in one package: sparse torus graphs and their
two-colouring (`graph`), the block Gibbs sampler with its counter-based random numbers (`gibbs`), the
DTM itself, a chain of conditional Ising models trained by sampling (`dtm`), and the thread budget the
sampler runs with on shared CPUs (`threads`). Nothing outside this package is imported by it but
`genflow.errors`."""
