"""The real-kernel matrix: fetch Debian kernels, boot each under QEMU, run the kernel tests inside.

`python -m scripts.kernelvm` (what `make test-kernels` runs). Modules: `fetch` (kernel packages into
a cache, through a private apt configuration), `vm` (one guest boot running one command), `matrix`
(the runs, the retries on boot failure, the result file) and `table` (docs/kernels.md from it).
"""
