"""``python -m ckptctl`` runs the command line."""

from ckptctl.cli.app import main

if __name__ == "__main__":
    main()
