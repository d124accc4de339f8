"""``taskvec explore``: a local web app over the task-vector library (see :mod:`taskvec.explore.analysis`)."""
