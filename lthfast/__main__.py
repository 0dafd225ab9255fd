"""`python -m lthfast ...` runs the `lthfast` command."""
from lthfast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
