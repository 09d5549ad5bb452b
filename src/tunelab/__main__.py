"""``python -m tunelab ...`` (and ``accelerate launch -m tunelab train ...``) run the tunelab command."""

from tunelab.cli import main

main()
