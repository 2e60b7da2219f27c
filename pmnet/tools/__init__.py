"""The command-line tools, as modules of the package.

``pmnet.tools.<tool>`` holds the whole tool (its parser and ``main``); three ways to run it:

    python tools/<tool>.py ...        from a clone, installed or not (tools/ holds thin shims)
    python -m pmnet.tools.<tool> ...  wherever the package is installed
    pmnet-<name> ...                  the console scripts of pyproject.toml ``[project.scripts]``

The console scripts are the functions of :mod:`pmnet.tools.scripts`.
"""
