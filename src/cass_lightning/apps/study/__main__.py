"""``python -m cass_lightning.apps.study``: the same as ``cass-study``."""

from cass_lightning.apps.study.app import main

if __name__ == "__main__":
    main()
