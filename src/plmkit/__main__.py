"""`python -m plmkit ...` is the same as `plm ...`."""

from plmkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
