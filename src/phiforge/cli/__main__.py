"""`python -m phiforge.cli` (and `torchrun -m phiforge.cli`) run the same app as the `phiforge` script."""

from . import main

main()
