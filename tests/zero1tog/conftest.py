import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXT = os.path.join(REPO, "custom", "zero1tog")


def load_ext():
    """Import the extension as launch.py does (package ``custom.zero1tog``)."""
    from threestudio.utils.extensions import import_extension

    import_extension(EXT, namespace="custom")
    import custom.zero1tog as z

    return z


@pytest.fixture(scope="session")
def z1g():
    return load_ext()
