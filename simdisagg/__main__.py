"""``python -m simdisagg`` runs the command line."""

from simdisagg.cli import main

main()
