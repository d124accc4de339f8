"""One module per ``taskvec`` sub-command.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``; ``taskvec.cli``
discovers them, so adding a command means adding a module here and nothing else.
"""
