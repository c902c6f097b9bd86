"""Scaling-law studies: fitting a study's points (`fits.py`). The sweep driver above `clipjax.main` comes next
(issue 31)."""
