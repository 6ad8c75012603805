"""``python -m trackd`` runs the command line."""

from trackd.cli import main

if __name__ == "__main__":
    main()
