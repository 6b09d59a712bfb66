"""`python -m downpour ...`: the same command line as the `downpour` console script."""
from downpour.ps.cli import main

if __name__ == "__main__":
    main()
