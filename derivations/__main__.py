"""``python -m derivations``: derive every method, check it at finite widths, write a report.

See :mod:`derivations._cli` for the options (``--help``) and :mod:`derivations`
for what is checked.
"""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
