"""Scaling-law studies above `clipjax.main` (`python -m clipjax.sweep`, see __main__.py): sweep files and their
runs (`spec.py`), running and tracking them (`runs.py`), cluster scripts (`emit.py`), and fitting the finished
runs' points (`study.py`, `fits.py`, `scaling_plot.py`)."""
