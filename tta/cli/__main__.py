"""``python -m tta.cli``: the ``tta`` command."""

from tta.cli._main import main

if __name__ == "__main__":
    main()
